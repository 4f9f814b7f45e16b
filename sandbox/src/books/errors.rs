//! The two ways the books say no: a [`BizError`] is WeChat's answer to a request
//! (`result_code=FAIL` + `err_code`), an [`AdminError`] the admin API's (HTTP status + JSON).

use thiserror::Error;

/// A business error: `result_code=FAIL` with this `err_code` / `err_code_des`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BizError {
    pub code: &'static str,
    pub des: String,
}

impl BizError {
    pub fn new(code: &'static str, des: impl Into<String>) -> Self {
        Self {
            code,
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
}

impl AdminError {
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::BadRequest(_) => "bad_request",
            AdminError::NotFound(_) => "not_found",
            AdminError::Conflict(_) => "conflict",
        }
    }
}
