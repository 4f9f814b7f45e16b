//! The scheduled poll as an HTTP event (how lambda_http hands a non-HTTP event to the router).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::routing::post;
use axum::{Json, Router};

use super::{ApiError, body_error};
use crate::service::{PollReport, RefundService};

/// The scheduled poll. lambda_http hands a non-HTTP event (the EventBridge Scheduler payload) to the
/// router as `POST /events` with the event as the JSON body; API Gateway never routes that path.
pub const EVENTS_PATH: &str = "/events";

#[derive(Clone)]
struct PollState {
    svc: Arc<RefundService>,
    budget: Duration,
}

async fn poll_event(
    State(st): State<PollState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PollReport>, ApiError> {
    let body = body.map_err(body_error)?;
    // Any JSON object is a trigger (`{"action":"poll"}` from our schedule, or the scheduler's own
    // envelope); logged so an unexpected shape can be seen.
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let source = event.get("source").and_then(|s| s.as_str()).unwrap_or("");
    let action = event.get("action").and_then(|s| s.as_str()).unwrap_or("");
    tracing::info!(source, action, "poll triggered");
    Ok(Json(st.svc.poll(st.budget).await?))
}

/// The scheduled-poll event route.
pub(super) fn events_router(svc: Arc<RefundService>, budget: Duration) -> Router {
    Router::new()
        .route(EVENTS_PATH, post(poll_event))
        .with_state(PollState { svc, budget })
}
