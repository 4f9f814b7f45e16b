//! The two ways the books say no: a [`BizError`] is WeChat's answer to a request
//! (`result_code=FAIL` + `err_code`), an [`AdminError`] the admin API's (HTTP status + JSON).

use std::borrow::Cow;

use thiserror::Error;

/// A business error: `result_code=FAIL` with this `err_code` / `err_code_des`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BizError {
    /// Usually one of the rules' fixed codes; an injected `refuse` fault brings its own.
    pub code: Cow<'static, str>,
    pub des: String,
}

impl BizError {
    pub fn new(code: impl Into<Cow<'static, str>>, des: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            des: des.into(),
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AdminError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The refund rules said no, as they would to an apply request (the `err_code` says which).
    #[error("{} ({})", .0.des, .0.code)]
    Refused(BizError),
}

impl AdminError {
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::BadRequest(_) => "bad_request",
            AdminError::NotFound(_) => "not_found",
            AdminError::Conflict(_) => "conflict",
            AdminError::Refused(_) => "refused",
        }
    }
}
