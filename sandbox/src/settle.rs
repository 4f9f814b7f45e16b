//! Settling and notifying: the loop that moves due PROCESSING refunds to their final status, and
//! the notification pushes that follow (started after the settled state is saved), including the
//! ones a restart resumes.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::books::{BookedStatus, State};
use crate::notify;

/// Settles due refunds and starts their notification pushes (after the settled state is saved,
/// so a notification never announces what a restart would undo).
pub fn settle(app: &Arc<App>, force: bool) -> Vec<String> {
    let (settled, pushes) = app.books.update(|st| {
        let settled = st.settle(
            tokio::time::Instant::now(),
            time::OffsetDateTime::now_utc(),
            force,
        );
        let pushes: Vec<_> = settled
            .iter()
            .filter_map(|no| prepare_push(app, st, no))
            .collect();
        (settled, pushes)
    });
    for (no, url, body) in pushes {
        spawn_push(app, no, url, body, 0, Duration::ZERO);
    }
    settled
}

/// Builds a settled refund's notification and records where it goes; None when it goes nowhere.
fn prepare_push(app: &App, st: &mut State, no: &str) -> Option<(String, String, String)> {
    let (url, fields) = st.notification(no, app.default_notify_url.as_deref())?;
    match (url, build_notification(app, &fields)) {
        (Some(url), Ok(body)) => {
            st.set_notify_target(no, Some(url.clone()), None);
            Some((no.to_string(), url, body))
        }
        (None, _) => {
            st.set_notify_target(no, None, Some("no notify_url".into()));
            None
        }
        (Some(url), Err(e)) => {
            st.set_notify_target(no, Some(url), Some(e));
            None
        }
    }
}

fn spawn_push(app: &App, no: String, url: String, body: String, done: u32, wait: Duration) {
    tokio::spawn(notify::deliver(notify::Push {
        books: app.books.clone(),
        client: app.notify_client.clone(),
        out_refund_no: no,
        url,
        body,
        retry_factor: app.notify_retry_factor,
        shutdown: app.shutdown.clone(),
        attempts_done: done,
        first_wait: wait,
    }));
}

/// After a restart: restarts the pushes of loaded refunds that were settled but neither delivered
/// nor given up, to the URL they were addressed to, continuing their retry schedule where it stood
/// (an attempt that was due while the sandbox was down goes out now; a negative wait means due).
/// The body is rebuilt, with a fresh nonce, as a retry would be.
pub fn resume_pushes(app: &Arc<App>) -> usize {
    let wall = time::OffsetDateTime::now_utc();
    let mut pending: Vec<_> = {
        let st = app.books.read();
        st.refunds
            .values()
            .filter(|r| r.status != BookedStatus::Processing && r.notify.pending())
            .filter_map(|r| {
                // The URL it was addressed to, not one derived from today's flags: WeChat keeps
                // retrying where it first sent it.
                let url = r.notify.url.clone()?;
                let (_, fields) = st.notification(&r.out_refund_no, None)?;
                let body = match build_notification(app, &fields) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(out_refund_no = %r.out_refund_no, error = %e,
                            "a pending notification cannot be rebuilt and is not resumed");
                        return None;
                    }
                };
                let wait = r
                    .notify
                    .next_attempt_at
                    .and_then(|t| Duration::try_from(t - wall).ok())
                    .unwrap_or(Duration::ZERO);
                Some((r.out_refund_no.clone(), url, body, r.notify.attempts, wait))
            })
            .collect()
    };
    pending.sort_by(|a, b| a.0.cmp(&b.0));
    let resumed = pending.len();
    for (no, url, body, done, wait) in pending {
        spawn_push(app, no, url, body, done, wait);
    }
    resumed
}

fn build_notification(app: &App, fields: &[(String, String)]) -> Result<String, String> {
    let req_info = notify::encrypt_req_info(
        fields.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &app.key,
    )
    .map_err(|e| e.to_string())?;
    let nonce = wxpay::NonceStr::random();
    wxpay::xml::encode([
        ("return_code", "SUCCESS"),
        ("return_msg", "OK"),
        ("appid", app.merchant.appid.as_str()),
        ("mch_id", app.merchant.mch_id.as_str()),
        ("nonce_str", nonce.as_str()),
        ("req_info", req_info.as_str()),
    ])
    .map_err(|e| e.to_string())
}

/// Ticks the settle loop until shutdown.
pub async fn settle_loop(app: Arc<App>) {
    let mut shutdown = app.shutdown.clone();
    let tick = (app.settle_after / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = interval.tick() => { settle(&app, false); }
            _ = shutdown.changed() => return,
        }
    }
}
