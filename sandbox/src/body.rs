//! Request bodies: read whole, up to the same cap as the XML decoder's.

use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};

/// Request bodies above this are refused (the XML decoder has the same cap).
pub const MAX_BODY: usize = wxpay::xml::MAX_BODY;

/// The body was over [`MAX_BODY`] (or the connection failed while sending it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge;

pub async fn read(body: Incoming) -> Result<Bytes, TooLarge> {
    Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|_| TooLarge)
}
