//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers' `#[utoipa::path]`
//! annotations and the request and response types, so the contract cannot drift from the code
//! (`local/openapi.json` was kept by hand and did). Served by the local stack at `GET /openapi.json`.

use std::borrow::Cow;

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{RefOr, Server};
use utoipa::{OpenApi, PartialSchema, ToSchema};

use super::{notify, reconciliations, refunds};

/// Every `error` code an answer of the API can carry (`ApiError::new` checks its code against
/// this list in debug builds, so a new code cannot be left out of the document).
pub const ERROR_CODES: &[&str] = &[
    "invalid_json",
    "validation_error",
    "invalid_body",
    "invalid_query",
    "invalid_path",
    "not_found",
    "method_not_allowed",
    "idempotency_key_reused",
    "in_progress",
    "body_too_large",
    "request_timeout",
    "unsupported_media_type",
    "refund_exceeds_order",
    "too_many_refunds",
    "total_fee_mismatch",
    "bill_date_in_future",
    "rate_limited",
    "internal_error",
    "upstream_error",
    "ledger_unavailable",
];

/// The error envelope `{"error": code, "message": text}` (the schema; `ApiError` writes it).
pub struct ErrorResponse;

impl PartialSchema for ErrorResponse {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .description(Some(
                "An error: a stable code to act on and a message in plain words that names the field.",
            ))
            .property(
                "error",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(ERROR_CODES.iter().copied())),
            )
            .required("error")
            .property("message", ObjectBuilder::new().schema_type(Type::String))
            .required("message")
            .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::FreeForm(
                false,
            )))
            .into()
    }
}

impl ToSchema for ErrorResponse {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Error")
    }
}

/// `metadata` of a refund request: at most 20 keys of 1–40 characters, values of at most 500,
/// no control characters in either (`crate::metadata::Metadata`).
pub(super) fn metadata_schema() -> Schema {
    let no_control = r"^[^\x00-\x1f\x7f-\x9f]*$";
    let object = ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::Object,
            Type::Null,
        ]))
        .description(Some(
            "Your own string keys and values (at most 20 keys of 1–40 characters, values of at most 500, no control characters); part of the idempotency check and echoed in the refund.",
        ))
        .max_properties(Some(crate::metadata::MAX_KEYS))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(crate::metadata::MAX_KEY_CHARS))
                .pattern(Some(no_control)),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(crate::metadata::MAX_VALUE_CHARS))
                .pattern(Some(no_control)),
        ));
    Schema::Object(object.build())
}

/// `needs_person`: a boolean that must be `true`.
pub(super) fn only_true() -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Boolean)
            .enum_values(Some([true]))
            .build(),
    )
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wxrefund",
        description = "WeChat Pay v2 refunds: a refund is recorded before WeChat is called and driven to a final state. Amounts are integer fen. Merchant routes are authenticated by IAM (SigV4) on API Gateway. Errors are `{\"error\", \"message\"}`; a query parameter a route does not take, or one given twice, is refused with `400 invalid_query`.",
        license(name = "Apache-2.0"),
    ),
    paths(
        refunds::create_refund,
        refunds::list_needing_person,
        refunds::get_refund,
        refunds::list_order_refunds,
        notify::refund_notify,
        reconciliations::create_reconciliation,
        reconciliations::get_reconciliation,
    ),
    components(schemas(ErrorResponse)),
    tags(
        (name = "refunds", description = "The merchant's refunds."),
        (name = "reconciliations", description = "A day's refunds against WeChat Pay's refund bill."),
        (name = "wechat", description = "Called by WeChat Pay, not by the merchant."),
    )
)]
struct ApiDoc;

/// The OpenAPI 3.1 document of every route of [`super::router`], without `servers`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // `IntoParams` drops `required` for a parameter whose schema is given by a function; this
    // one is required (the route lists only the refunds that need a person).
    if let Some(op) = doc
        .paths
        .paths
        .get_mut("/refunds")
        .and_then(|item| item.get.as_mut())
    {
        for p in op.parameters.iter_mut().flatten() {
            if p.name == "needs_person" {
                p.required = utoipa::openapi::Required::True;
                p.description = Some(
                    "Required, and only `true`: this route lists the refunds that need a person."
                        .into(),
                );
            }
        }
    }
    doc
}

/// The document as JSON, with `servers` naming `server_url` (where the API really listens).
pub fn openapi_json(server_url: &str) -> Result<String, serde_json::Error> {
    let mut doc = openapi();
    doc.servers = Some(vec![Server::new(server_url)]);
    doc.to_json()
}
