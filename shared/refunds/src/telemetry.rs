//! Operational metrics as CloudWatch Embedded Metric Format (EMF) lines in the functions' logs,
//! through the `metrics` facade and the maintained `metrics_cloudwatch_embedded` exporter: each
//! invocation ends with one JSON document (`_aws.CloudWatchMetrics`) on stderr, which CloudWatch
//! Logs turns into metrics of namespace [`NAMESPACE`] with the dimension `Function` and, where a
//! metric has one, one small label (a call, an outcome, an error code). Installed on Lambda only;
//! elsewhere (the local stack, tests) the macros record nothing.
//!
//! Every metric name is here, so dashboards and alarms have one list to read.

use std::sync::OnceLock;

use metrics_cloudwatch_embedded::Collector;

pub const NAMESPACE: &str = "wxrefund";

/// A cold start: the process was started and built its service.
pub const COLD_STARTS: &str = "ColdStarts";
/// `POST /refunds` answers, label `result`: the refund's status, or the error code.
pub const REFUND_REQUESTS: &str = "RefundRequests";
/// Calls to WeChat, labels `call` (`refund`, `query`, `bill`) and `outcome` (`ok`, `rejected`,
/// `not_sent`, `unknown`).
pub const WECHAT_CALLS: &str = "WeChatCalls";
/// How long a call to WeChat took, label `call` (milliseconds).
pub const WECHAT_CALL_MS: &str = "WeChatCallMilliseconds";
/// WeChat's refusals, label `code` (its `err_code`, a bounded vocabulary).
pub const WECHAT_ERR_CODES: &str = "WeChatErrCodes";
/// 1 while the client sends to the backup domain first (failover after a connect failure).
pub const WECHAT_ON_BACKUP: &str = "WeChatOnBackupDomain";
/// WeChat refund notifications, label `result` (`accepted`, `refused`).
pub const NOTIFICATIONS: &str = "Notifications";
/// What a poll did (per invocation).
pub const POLL_EXAMINED: &str = "PollExamined";
pub const POLL_SETTLED: &str = "PollSettled";
pub const POLL_ERRORS: &str = "PollErrors";
/// Due refunds a poll left when its budget ran out, and how late the oldest was.
pub const POLL_LEFT_DUE: &str = "PollLeftDue";
pub const POLL_OLDEST_DUE_AGE_SECONDS: &str = "PollOldestDueAgeSeconds";
/// Merchant events published, and refused (they wait in the outbox; the alarm counts the
/// poller's `events_pending` log field instead, one series for the whole stack).
pub const EVENTS_PUBLISHED: &str = "EventsPublished";
pub const EVENTS_PENDING: &str = "EventsRefused";
/// A refund newly needing a person (CHANGE, contradiction, mismatch, escalation).
pub const NEEDS_PERSON: &str = "RefundsFlaggedForPerson";
/// Discrepancies a reconciliation left for a person, label `kind`.
pub const RECONCILIATION_DISCREPANCIES: &str = "ReconciliationDiscrepancies";

static COLLECTOR: OnceLock<&'static Collector> = OnceLock::new();

/// Installs the EMF recorder when running on Lambda (`AWS_LAMBDA_FUNCTION_NAME` set; its value is
/// the `Function` dimension) and counts the cold start. A second call, or a failure to install,
/// leaves metrics off: they are never worth failing a cold start for.
pub fn install_on_lambda() {
    let Some(function) = std::env::var("AWS_LAMBDA_FUNCTION_NAME")
        .ok()
        .filter(|f| !f.is_empty())
    else {
        return;
    };
    if COLLECTOR.get().is_some() {
        return;
    }
    match metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace(NAMESPACE)
        .with_dimension("Function", function)
        .init()
    {
        Ok(c) => {
            let _ = COLLECTOR.set(c);
            metrics::counter!(COLD_STARTS).increment(1);
        }
        Err(e) => tracing::warn!(error = %e, "EMF metrics not installed"),
    }
}

/// Writes what was recorded since the last flush as one EMF line (at the end of an invocation).
pub fn flush() {
    if let Some(c) = COLLECTOR.get()
        && let Err(e) = c.flush(std::io::stderr().lock())
    {
        tracing::warn!(error = %e, "EMF metrics could not be written");
    }
}
