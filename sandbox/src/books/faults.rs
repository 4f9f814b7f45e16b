//! Injected faults: their kinds, which endpoint and phase of a request each one hits, and how a
//! fault list is used up.

use serde::{Deserialize, Serialize};

/// Which endpoint a fault applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultTarget {
    #[default]
    Apply,
    Query,
    Any,
}

/// An injected fault. "Before" faults answer without touching the books; "after" faults take
/// the refund first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Sleep this long before handling the request.
    Latency { ms: u64 },
    /// Before: HTTP 502 with an HTML body (the gateway answered, WeChat never saw the request).
    Http502,
    /// Before: `result_code=FAIL err_code=SYSTEMERROR`, nothing recorded.
    SystemErrorBefore,
    /// Before: `err_code=BIZERR_NEED_RETRY`, nothing recorded.
    BizErrNeedRetry,
    /// Before: `err_code=NOTENOUGH` (merchant balance too low).
    NotEnough,
    /// After: the refund is taken, then `SYSTEMERROR` is returned.
    SystemErrorAfter,
    /// After: the refund is taken, then the connection is closed without a response.
    DropResponse,
    /// After: the refund is taken, then no response is ever sent (the client times out).
    Hang,
    /// After: the normal reply, with a wrong `sign`.
    BadSign,
}

impl FaultKind {
    pub fn phase(&self) -> Phase {
        match self {
            FaultKind::Latency { .. } => Phase::Latency,
            FaultKind::Http502
            | FaultKind::SystemErrorBefore
            | FaultKind::BizErrNeedRetry
            | FaultKind::NotEnough => Phase::Before,
            FaultKind::SystemErrorAfter
            | FaultKind::DropResponse
            | FaultKind::Hang
            | FaultKind::BadSign => Phase::After,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Latency,
    Before,
    After,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Apply,
    Query,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    #[serde(flatten)]
    pub kind: FaultKind,
    /// How many requests it affects; absent = until cleared.
    #[serde(default)]
    pub times: Option<u32>,
    #[serde(default)]
    pub on: FaultTarget,
}

impl Fault {
    fn matches(&self, endpoint: Endpoint, phase: Phase) -> bool {
        let target_ok = matches!(
            (self.on, endpoint),
            (FaultTarget::Any, _)
                | (FaultTarget::Apply, Endpoint::Apply)
                | (FaultTarget::Query, Endpoint::Query)
        );
        target_ok && self.kind.phase() == phase && self.times != Some(0)
    }
}

/// Takes (and counts down) the first matching fault: the order's own faults win over global ones.
/// The flag says whether the list changed (a fault without `times` is used, not consumed).
pub(super) fn take_fault(
    list: &mut Vec<Fault>,
    endpoint: Endpoint,
    phase: Phase,
) -> Option<(FaultKind, bool)> {
    let i = list.iter().position(|f| f.matches(endpoint, phase))?;
    let kind = list[i].kind.clone();
    let mut changed = false;
    if let Some(n) = list[i].times.as_mut() {
        *n = n.saturating_sub(1);
        changed = true;
        if *n == 0 {
            list.remove(i);
        }
    }
    Some((kind, changed))
}
