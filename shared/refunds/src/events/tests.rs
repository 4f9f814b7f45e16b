//! The event rule, table-tested: which write produces which event, with which id and reason.

use wxpay::{Fen, OrderRef, OutTradeNo};

use super::*;
use crate::correction::{Attention, Correction, FactSource};
use crate::ledger::NewRefund;
use crate::state::LastError;
use RefundStatus::*;

fn rec(status: RefundStatus, version: u64) -> RefundRecord {
    let mut r = crate::ledger::new_record(&NewRefund {
        out_refund_no: "R-1".parse().unwrap(),
        order: OrderRef::OutTradeNo(OutTradeNo::new("ORDER-1").unwrap()),
        total_fee: Fen::new(100).unwrap(),
        refund_fee: Fen::new(40).unwrap(),
        refund_desc: None,
        refund_account: None,
        metadata: Default::default(),
        request_hash: "h".into(),
        now: UnixMillis(1_000),
        next_check_at: UnixMillis(2_000),
        lease: None,
    });
    r.status = status;
    r.version = version;
    r
}

fn moved(before: &RefundRecord, to: RefundStatus) -> RefundRecord {
    let mut after = before.clone();
    after.status = to;
    after.version += 1;
    after.updated_at = UnixMillis(1_764_000_000_000);
    after
}

type Kind = (DetailType, Option<EventReason>);

fn kinds(events: &[OutboxEvent]) -> Vec<Kind> {
    events
        .iter()
        .map(|e| (e.envelope.detail_type, e.envelope.detail.reason))
        .collect()
}

const AT: UnixMillis = UnixMillis(9_000);

#[test]
fn each_final_status_entered_is_one_event_and_nothing_else_is_news() {
    use DetailType as D;
    let refund = |r| Some(EventReason::Refund(r));
    // GIVEN a move from PROCESSING (or SUBMITTING) into each status
    let table: [(RefundStatus, RefundStatus, Vec<Kind>); 8] = [
        (Processing, Success, vec![(D::Succeeded, None)]),
        (
            Processing,
            RefundClose,
            vec![(D::Closed, refund(Reason::ClosedByWechat))],
        ),
        (
            Submitting,
            Failed,
            vec![(D::Failed, refund(Reason::Refused))],
        ),
        (
            Processing,
            Change,
            vec![(D::NeedsAttention, refund(Reason::NeedsManualAction))],
        ),
        (Submitting, Processing, vec![]),
        (Submitting, Unknown, vec![]),
        (Submitting, RetryWait, vec![]),
        (Recorded, Submitting, vec![]),
    ];
    for (from, to, want) in table {
        // WHEN the events of the move are computed
        let before = rec(from, 3);
        let got = of_change(Some(&before), &moved(&before, to), AT);
        // THEN exactly the expected ones
        assert_eq!(kinds(&got), want, "{from} -> {to}");
    }
}

#[test]
fn the_id_is_fixed_by_the_refund_its_version_and_the_kind() {
    // GIVEN a refund moving into SUCCESS at version 4
    let before = rec(Processing, 3);
    let after = moved(&before, Success);
    // WHEN its events are computed twice (a retried write computes them again)
    let a = of_change(Some(&before), &after, AT);
    let b = of_change(Some(&before), &after, UnixMillis(1));
    // THEN the id is the same and names the fact
    assert_eq!(a[0].id(), "R-1:4:succeeded");
    assert_eq!(a[0].id(), b[0].id());
    let e = &a[0].envelope;
    assert_eq!(e.detail.event_id, e.id);
    assert_eq!(e.source, "wxrefund");
    assert_eq!(e.time, "2025-11-24T16:00:00Z");
    assert_eq!(e.detail.previous_status, Some(Processing));
    assert_eq!(e.detail.refund.status, Success);
    assert_eq!(e.detail.refund.refund_fee, 40);
    assert_eq!(a[0].redeliver_at, AT);
}

#[test]
fn a_failure_says_why_in_the_merchants_words() {
    // GIVEN a refund WeChat refused for good with NOTENOUGH's sibling USER_ACCOUNT_ABNORMAL
    let before = rec(Submitting, 2);
    let mut after = moved(&before, Failed);
    after.last_error = Some(LastError {
        code: "USER_ACCOUNT_ABNORMAL".into(),
        message: "abnormal".into(),
    });
    // WHEN / THEN the event carries the normalized reason
    let got = of_change(Some(&before), &after, AT);
    assert_eq!(
        kinds(&got),
        vec![(
            DetailType::Failed,
            Some(EventReason::Refund(Reason::AccountAbnormal))
        )]
    );
}

#[test]
fn a_contradiction_is_both_the_new_status_and_a_call_for_a_person() {
    // GIVEN a FAILED refund that WeChat's books say SUCCEEDED, corrected
    let before = rec(Failed, 5);
    let mut after = moved(&before, Success);
    after.corrections.push(Correction {
        from: Failed,
        to: Success,
        kind: CorrectionKind::Contradiction,
        source: FactSource::Query,
        at: UnixMillis(7),
    });
    after.attention = Some(Attention {
        reason: AttentionReason::Contradiction,
        since: UnixMillis(7),
    });
    // WHEN / THEN two events: the merchant learns it succeeded, and a person must look
    let got = of_change(Some(&before), &after, AT);
    assert_eq!(
        kinds(&got),
        vec![
            (DetailType::Succeeded, None),
            (
                DetailType::NeedsAttention,
                Some(EventReason::Attention(AttentionWhy::ContradictedByWechat))
            ),
        ]
    );
    assert_eq!(got[1].id(), "R-1:6:needs_attention");
}

#[test]
fn a_change_resolved_in_the_merchant_platform_is_only_its_new_status() {
    // GIVEN a CHANGE refund resolved to SUCCESS (a resolution, not a contradiction)
    let before = rec(Change, 5);
    let mut after = moved(&before, Success);
    after.corrections.push(Correction {
        from: Change,
        to: Success,
        kind: CorrectionKind::Resolution,
        source: FactSource::Notification,
        at: UnixMillis(7),
    });
    // WHEN / THEN one event, the success
    let got = of_change(Some(&before), &after, AT);
    assert_eq!(kinds(&got), vec![(DetailType::Succeeded, None)]);
}

#[test]
fn an_escalation_is_one_event_when_new_and_none_when_repeated() {
    let flag = |reason| {
        Some(Attention {
            reason,
            since: UnixMillis(7),
        })
    };
    // GIVEN a stuck UNKNOWN refund flagged now
    let before = rec(Unknown, 5);
    let mut after = before.clone();
    after.version += 1;
    after.attention = flag(AttentionReason::Stuck);
    // THEN one Needs Attention event, `stuck`
    assert_eq!(
        kinds(&of_change(Some(&before), &after, AT)),
        vec![(
            DetailType::NeedsAttention,
            Some(EventReason::Attention(AttentionWhy::Stuck))
        )]
    );
    // AND flagging it stuck again (a later poll) is no news
    let mut again = after.clone();
    again.version += 1;
    assert!(of_change(Some(&after), &again, AT).is_empty());
    // AND a graver flag replacing it (reconciliation's mismatch) is
    let mut graver = after.clone();
    graver.version += 1;
    graver.attention = flag(AttentionReason::Mismatch);
    assert_eq!(
        kinds(&of_change(Some(&after), &graver, AT)),
        vec![(
            DetailType::NeedsAttention,
            Some(EventReason::Attention(AttentionWhy::Mismatch))
        )]
    );
    // AND a flag cleared (it finished by itself) is only its status
    let mut done = graver.clone();
    done.version += 1;
    done.status = Success;
    done.attention = None;
    assert_eq!(
        kinds(&of_change(Some(&graver), &done, AT)),
        vec![(DetailType::Succeeded, None)]
    );
}

#[test]
fn a_refund_first_learnt_from_wechat_announces_its_status_without_a_previous_one() {
    // GIVEN an external refund recorded SUCCESS (made in the merchant platform)
    let mut ext = rec(Success, 1);
    ext.external = true;
    // WHEN / THEN one success event with no previous status
    let got = of_change(None, &ext, AT);
    assert_eq!(kinds(&got), vec![(DetailType::Succeeded, None)]);
    assert_eq!(got[0].envelope.detail.previous_status, None);
    assert!(got[0].envelope.detail.refund.external);
    // AND an external one still PROCESSING announces nothing yet
    assert!(of_change(None, &rec(Processing, 1), AT).is_empty());
}

#[test]
fn the_envelope_reads_as_eventbridges_and_back() {
    // GIVEN a failure event
    let before = rec(Submitting, 2);
    let e = of_change(Some(&before), &moved(&before, Failed), AT).remove(0);
    // WHEN serialized
    let json = serde_json::to_value(&e.envelope).unwrap();
    // THEN it has EventBridge's names and the documented detail
    assert_eq!(json["detail-type"], "Refund Failed");
    assert_eq!(json["source"], "wxrefund");
    assert_eq!(json["detail"]["reason"], "refused");
    assert_eq!(json["detail"]["previous_status"], "SUBMITTING");
    assert_eq!(json["detail"]["refund"]["out_refund_no"], "R-1");
    // AND the stored form reads back the same (the outbox keeps it as JSON)
    let stored = serde_json::to_string(&e).unwrap();
    assert_eq!(serde_json::from_str::<OutboxEvent>(&stored).unwrap(), e);
    let stuck = EventReason::Attention(AttentionWhy::Stuck);
    assert_eq!(
        serde_json::from_str::<EventReason>(&serde_json::to_string(&stuck).unwrap()).unwrap(),
        stuck
    );
}
