//! Injected faults: their kinds, which endpoint and phase of a request each one hits, how they are
//! checked, and how a fault list is used up (oldest first).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Which endpoint a fault applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultTarget {
    #[default]
    Apply,
    Query,
    /// `/pay/downloadbill` (global faults only: a bill is the merchant's, not an order's).
    Bill,
    Any,
}

/// `err_code` is String(32) (docs/PROTOCOL.md "Checking a reply").
const MAX_ERR_CODE_LEN: usize = 32;
/// `err_code_des` is String(128) (docs/PROTOCOL.md "Checking a reply").
const MAX_ERR_CODE_DES_LEN: usize = 128;

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
    /// Before: a definitive refusal, `result_code=FAIL` with this `err_code` (and `err_code_des`,
    /// or a text of WeChat's for the code); nothing recorded.
    Refuse {
        err_code: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        err_code_des: Option<String>,
    },
    /// Queries only: `REFUNDNOTEXIST` for refunds the books do hold, as WeChat answers while its
    /// query side lags behind an apply it accepted.
    RefundNotExist,
    /// After: the refund is taken, then `SYSTEMERROR` is returned.
    SystemErrorAfter,
    /// After: the refund is taken, then the connection is closed without a response.
    DropResponse,
    /// After: the refund is taken, then no response is ever sent (the client times out).
    Hang,
    /// After: the normal reply, with a wrong `sign`.
    BadSign,
    /// Bills only, before: `return_msg=Bill Creating` (WeChat has not made the day's bill yet).
    BillCreating,
}

impl FaultKind {
    pub fn phase(&self) -> Phase {
        match self {
            FaultKind::Latency { .. } => Phase::Latency,
            FaultKind::Http502
            | FaultKind::SystemErrorBefore
            | FaultKind::BizErrNeedRetry
            | FaultKind::NotEnough
            | FaultKind::Refuse { .. }
            | FaultKind::RefundNotExist
            | FaultKind::BillCreating => Phase::Before,
            FaultKind::SystemErrorAfter
            | FaultKind::DropResponse
            | FaultKind::Hang
            | FaultKind::BadSign => Phase::After,
        }
    }

    /// The JSON name of the kind.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Latency { .. } => "latency",
            FaultKind::Http502 => "http502",
            FaultKind::SystemErrorBefore => "system_error_before",
            FaultKind::BizErrNeedRetry => "biz_err_need_retry",
            FaultKind::NotEnough => "not_enough",
            FaultKind::Refuse { .. } => "refuse",
            FaultKind::RefundNotExist => "refund_not_exist",
            FaultKind::SystemErrorAfter => "system_error_after",
            FaultKind::DropResponse => "drop_response",
            FaultKind::Hang => "hang",
            FaultKind::BadSign => "bad_sign",
            FaultKind::BillCreating => "bill_creating",
        }
    }

    /// Whether it can hit requests to `endpoint` at all: a query or a bill takes no refund, so
    /// "after" faults have nothing to follow there (except that a bill that was made can still be
    /// lost on the way: `drop_response`, `hang`), only a query can miss a refund and only a bill
    /// can be still in the making.
    pub fn hits(&self, endpoint: Endpoint) -> bool {
        match self {
            FaultKind::RefundNotExist => endpoint == Endpoint::Query,
            FaultKind::BillCreating => endpoint == Endpoint::Bill,
            FaultKind::DropResponse | FaultKind::Hang => endpoint != Endpoint::Query,
            FaultKind::SystemErrorAfter | FaultKind::BadSign => endpoint == Endpoint::Apply,
            _ => true,
        }
    }

    /// `on` when a fault does not say: the one endpoint of a kind that hits only one besides
    /// apply.
    pub fn default_target(&self) -> FaultTarget {
        match self {
            FaultKind::RefundNotExist => FaultTarget::Query,
            FaultKind::BillCreating => FaultTarget::Bill,
            _ => FaultTarget::Apply,
        }
    }

    /// The JSON keys a fault of this kind may have besides `kind`, `times` and `on`.
    fn fields(&self) -> &'static [&'static str] {
        match self {
            FaultKind::Latency { .. } => &["ms"],
            FaultKind::Refuse { .. } => &["err_code", "err_code_des"],
            _ => &[],
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
    /// `/pay/downloadbill`.
    Bill,
}

impl Endpoint {
    pub const ALL: [Endpoint; 3] = [Endpoint::Apply, Endpoint::Query, Endpoint::Bill];

    /// The `on` value naming it.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Apply => "apply",
            Endpoint::Query => "query",
            Endpoint::Bill => "bill",
        }
    }
}

/// `{"kind": K, ...its fields, "times"?: n, "on"?: "apply"|"query"|"any"}`. Unknown keys are
/// refused (a misspelt `"times"` would otherwise make a fault endless), and `on` defaults to
/// [`FaultKind::default_target`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fault {
    #[serde(flatten)]
    pub kind: FaultKind,
    /// How many requests it affects; absent = until cleared.
    pub times: Option<u32>,
    pub on: FaultTarget,
}

impl<'de> Deserialize<'de> for Fault {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Fault, D::Error> {
        let mut map = Map::<String, Value>::deserialize(d)?;
        let times = match map.remove("times") {
            None => None,
            Some(v) => serde_json::from_value::<Option<u32>>(v)
                .map_err(|e| D::Error::custom(format!("times: {e}")))?,
        };
        let on = match map.remove("on") {
            None => None,
            Some(v) => Some(
                serde_json::from_value::<FaultTarget>(v)
                    .map_err(|e| D::Error::custom(format!("on: {e}")))?,
            ),
        };
        let keys: Vec<String> = map.keys().cloned().collect();
        let kind: FaultKind =
            serde_json::from_value(Value::Object(map)).map_err(D::Error::custom)?;
        if let Some(k) = keys
            .iter()
            .find(|k| *k != "kind" && !kind.fields().contains(&k.as_str()))
        {
            return Err(D::Error::custom(format!(
                "unknown field `{k}` for a {} fault (it takes kind, {}times and on)",
                kind.name(),
                kind.fields()
                    .iter()
                    .map(|f| format!("{f}, "))
                    .collect::<String>()
            )));
        }
        let on = on.unwrap_or_else(|| kind.default_target());
        Ok(Fault { kind, times, on })
    }
}

impl Fault {
    /// Refuses a fault that could never fire or would break a reply: used on every fault added
    /// through the admin API, a new order or a loaded `books.json`.
    pub fn check(&self) -> Result<(), String> {
        let name = self.kind.name();
        if self.times == Some(0) {
            return Err(format!(
                "{name}: times must be at least 1 (leave it out for \"until cleared\")"
            ));
        }
        let endpoints: &[Endpoint] = match self.on {
            FaultTarget::Apply => &[Endpoint::Apply],
            FaultTarget::Query => &[Endpoint::Query],
            FaultTarget::Bill => &[Endpoint::Bill],
            FaultTarget::Any => &Endpoint::ALL,
        };
        if !endpoints.iter().any(|&e| self.kind.hits(e)) {
            let only: Vec<&str> = Endpoint::ALL
                .into_iter()
                .filter(|&e| self.kind.hits(e))
                .map(Endpoint::name)
                .collect();
            let choices: Vec<String> = only.iter().map(|e| format!("\"{e}\"")).collect();
            return Err(format!(
                "{name} only hits {} requests; \"on\" must be {} or \"any\"",
                only.join(" and "),
                choices.join(", ")
            ));
        }
        if let FaultKind::Refuse {
            err_code,
            err_code_des,
        } = &self.kind
        {
            // Both go into signed XML replies: keep them to WeChat's lengths and plain text.
            if err_code.is_empty()
                || err_code.len() > MAX_ERR_CODE_LEN
                || !err_code
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(format!(
                    "refuse: err_code {:?} must be 1 to {MAX_ERR_CODE_LEN} upper-case letters, \
                     digits or '_' (e.g. USER_ACCOUNT_ABNORMAL)",
                    err_code.chars().take(40).collect::<String>()
                ));
            }
            if let Some(des) = err_code_des
                && (des.is_empty()
                    || des.chars().count() > MAX_ERR_CODE_DES_LEN
                    || des.contains("]]>")
                    || des.chars().any(|c| c.is_control() || c.len_utf8() > 3))
            {
                return Err(format!(
                    "refuse: err_code_des must be 1 to {MAX_ERR_CODE_DES_LEN} characters of text \
                     (no control characters, no 4-byte UTF-8, no \"]]>\")"
                ));
            }
        }
        Ok(())
    }

    /// [`Fault::check`] for a fault of one order: it must be able to hit that order's apply or
    /// query requests (a bill is the merchant's; bill faults are global).
    pub fn check_for_order(&self) -> Result<(), String> {
        self.check()?;
        let order_endpoints: &[Endpoint] = match self.on {
            FaultTarget::Apply => &[Endpoint::Apply],
            FaultTarget::Query => &[Endpoint::Query],
            FaultTarget::Bill => &[],
            FaultTarget::Any => &[Endpoint::Apply, Endpoint::Query],
        };
        if order_endpoints.iter().any(|&e| self.kind.hits(e)) {
            return Ok(());
        }
        Err(format!(
            "{}: a bill is the merchant's, not an order's: bill faults are global \
             (POST /sandbox/faults)",
            self.kind.name()
        ))
    }

    fn targets(&self, endpoint: Endpoint) -> bool {
        let target_ok = matches!(
            (self.on, endpoint),
            (FaultTarget::Any, _)
                | (FaultTarget::Apply, Endpoint::Apply)
                | (FaultTarget::Query, Endpoint::Query)
                | (FaultTarget::Bill, Endpoint::Bill)
        );
        target_ok && self.kind.hits(endpoint) && self.times != Some(0)
    }
}

/// Where the fault deciding a request sits in `list`: the oldest fault that hits `endpoint`,
/// latency faults aside (they delay a request whatever else happens to it).
pub(super) fn decisive(list: &[Fault], endpoint: Endpoint) -> Option<usize> {
    list.iter()
        .position(|f| f.kind.phase() != Phase::Latency && f.targets(endpoint))
}

/// Where the oldest latency fault that hits `endpoint` sits in `list`.
pub(super) fn latency(list: &[Fault], endpoint: Endpoint) -> Option<usize> {
    list.iter()
        .position(|f| f.kind.phase() == Phase::Latency && f.targets(endpoint))
}

/// Uses the fault at `i` for one request: counts it down, removing it when used up. Returns its
/// kind and whether the list changed (a fault without `times` is used, not consumed).
pub(super) fn use_fault(list: &mut Vec<Fault>, i: usize) -> Option<(FaultKind, bool)> {
    let fault = list.get_mut(i)?;
    let kind = fault.kind.clone();
    let Some(n) = fault.times.as_mut() else {
        return Some((kind, false));
    };
    *n = n.saturating_sub(1);
    if *n == 0 {
        list.remove(i);
    }
    Some((kind, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Fault, String> {
        serde_json::from_str::<Fault>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn faults_parse_with_defaults_and_refuse_unknown_keys() {
        // GIVEN the JSON forms THEN they parse, `on` defaulting per kind
        let f = parse(r#"{"kind":"refuse","err_code":"USER_ACCOUNT_ABNORMAL","times":1}"#).unwrap();
        assert_eq!(
            f,
            Fault {
                kind: FaultKind::Refuse {
                    err_code: "USER_ACCOUNT_ABNORMAL".into(),
                    err_code_des: None
                },
                times: Some(1),
                on: FaultTarget::Apply,
            }
        );
        let f = parse(r#"{"kind":"refund_not_exist"}"#).unwrap();
        assert_eq!((f.on, f.times), (FaultTarget::Query, None));
        let f = parse(r#"{"kind":"latency","ms":5,"on":"any","times":null}"#).unwrap();
        assert_eq!(f.kind, FaultKind::Latency { ms: 5 });
        // AND they serialize as they were written (the books.json form)
        let back: Fault = serde_json::from_value(serde_json::to_value(&f).unwrap()).unwrap();
        assert_eq!(back, f);
        // WHEN a key is unknown or misspelt, or a value has the wrong type THEN refused
        for bad in [
            r#"{"kind":"not_enough","tims":1}"#,
            r#"{"kind":"refuse","err_code":"X","err_code_dez":"y"}"#,
            r#"{"kind":"hang","ms":5}"#,
            r#"{"kind":"latency"}"#,
            r#"{"kind":"meteor"}"#,
            r#"{"kind":"hang","on":"both"}"#,
            r#"{"kind":"hang","times":-1}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn faults_that_could_never_fire_or_break_a_reply_are_refused() {
        let fault = |json: &str| parse(json).unwrap().check();
        assert_eq!(
            fault(r#"{"kind":"refuse","err_code":"TRADE_OVERDUE"}"#),
            Ok(())
        );
        assert_eq!(fault(r#"{"kind":"refund_not_exist","on":"any"}"#), Ok(()));
        for bad in [
            r#"{"kind":"refund_not_exist","on":"apply"}"#,
            r#"{"kind":"hang","on":"query"}"#,
            r#"{"kind":"not_enough","times":0}"#,
            r#"{"kind":"refuse","err_code":""}"#,
            r#"{"kind":"refuse","err_code":"lower"}"#,
            r#"{"kind":"refuse","err_code":"A_CODE_LONGER_THAN_THIRTY_TWO_CHARS"}"#,
            r#"{"kind":"refuse","err_code":"X","err_code_des":"a]]>b"}"#,
            r#"{"kind":"refuse","err_code":"X","err_code_des":""}"#,
        ] {
            assert!(fault(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bill_faults_hit_bills_only_where_they_mean_something() {
        // GIVEN bill_creating WHEN parsed THEN aimed at bills by default, and only bills
        let f = parse(r#"{"kind":"bill_creating","times":1}"#).unwrap();
        assert_eq!((f.on, f.check()), (FaultTarget::Bill, Ok(())));
        assert_eq!(
            parse(r#"{"kind":"bill_creating","on":"apply"}"#)
                .unwrap()
                .check(),
            Err("bill_creating only hits bill requests; \"on\" must be \"bill\" or \"any\"".into())
        );
        // AND generic before faults and a lost response hit bills; refund-only kinds do not
        for ok in [
            r#"{"kind":"system_error_before","on":"bill"}"#,
            r#"{"kind":"http502","on":"bill"}"#,
            r#"{"kind":"latency","ms":1,"on":"bill"}"#,
            r#"{"kind":"drop_response","on":"bill"}"#,
            r#"{"kind":"hang","on":"bill"}"#,
            r#"{"kind":"refuse","err_code":"20007","on":"bill"}"#,
        ] {
            assert_eq!(parse(ok).unwrap().check(), Ok(()), "{ok}");
        }
        for bad in [
            r#"{"kind":"bad_sign","on":"bill"}"#,
            r#"{"kind":"system_error_after","on":"bill"}"#,
            r#"{"kind":"refund_not_exist","on":"bill"}"#,
        ] {
            assert!(parse(bad).unwrap().check().is_err(), "{bad}");
        }
        assert_eq!(
            parse(r#"{"kind":"hang","on":"query"}"#).unwrap().check(),
            Err("hang only hits apply and bill requests; \"on\" must be \"apply\", \"bill\" or \"any\"".into())
        );
        // AND an order's fault must be able to hit that order's requests: bills are global
        assert!(
            parse(r#"{"kind":"bill_creating"}"#)
                .unwrap()
                .check_for_order()
                .is_err()
        );
        assert!(
            parse(r#"{"kind":"http502","on":"bill"}"#)
                .unwrap()
                .check_for_order()
                .is_err()
        );
        assert_eq!(
            parse(r#"{"kind":"http502","on":"any"}"#)
                .unwrap()
                .check_for_order(),
            Ok(())
        );
        // AND an "any" fault is found for each endpoint it hits
        let list = vec![parse(r#"{"kind":"hang","on":"any"}"#).unwrap()];
        assert_eq!(decisive(&list, Endpoint::Bill), Some(0));
        assert_eq!(decisive(&list, Endpoint::Query), None);
    }

    #[test]
    fn the_oldest_fault_decides_whatever_its_phase() {
        // GIVEN an after fault added before a before fault, and a latency fault between them
        let mut list: Vec<Fault> = [
            r#"{"kind":"system_error_after","times":1,"on":"any"}"#,
            r#"{"kind":"latency","ms":1,"times":1}"#,
            r#"{"kind":"not_enough","times":2,"on":"any"}"#,
        ]
        .iter()
        .map(|j| parse(j).unwrap())
        .collect();
        // THEN the after fault decides the next apply, the latency fault is found on its own
        assert_eq!(decisive(&list, Endpoint::Apply), Some(0));
        assert_eq!(latency(&list, Endpoint::Apply), Some(1));
        // AND a query skips the after fault (nothing to follow there)
        assert_eq!(decisive(&list, Endpoint::Query), Some(2));
        // WHEN used THEN counted down and removed at 0
        assert_eq!(
            use_fault(&mut list, 0),
            Some((FaultKind::SystemErrorAfter, true))
        );
        assert_eq!(decisive(&list, Endpoint::Apply), Some(1));
        assert_eq!(use_fault(&mut list, 1), Some((FaultKind::NotEnough, true)));
        assert_eq!(list[1].times, Some(1));
        assert_eq!(use_fault(&mut list, 9), None);
    }
}
