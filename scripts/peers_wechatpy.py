#!/usr/bin/env python3
"""The peer side of scripts/bench-peers: the same protocol work as `examples/peers.rs time`, done
with wechatpy's own WeChatPay client, on the bytes `examples/peers.rs write` put in DIR.

Usage: peers_wechatpy.py DIR REPEATS. Prints one `median_us WORK VALUE` line per work item.

Only the network is replaced: the client's HTTP session is a stub that answers with the reply bytes
from DIR, so `client.refund.apply` runs wechatpy's real request path (nonce, signature, XML) and
its real reply handling (`_handle_result`: XML parse, return/result codes). wechatpy does not check
a reply's signature on that path, so the script adds `client.check_signature`, the client's own
check, to match what our side does. The results are compared with what Rust typed from the same
bytes (`expected.json`): a comparison of different work fails instead of printing a ratio.
"""

import json
import statistics
import sys
import time
from pathlib import Path

import requests
import xmltodict
from wechatpy.pay import WeChatPay
from wechatpy.pay.utils import calculate_signature

# A sample lasts at least this long, so the clock's resolution and overhead do not count.
SAMPLE_NS = 2_000_000


class ReplyStub:
    """Stands in for the client's requests.Session: keeps the body it was sent, answers `reply`."""

    def __init__(self, reply: requests.Response):
        self.reply = reply
        self.sent = None

    def request(self, method, url, **kwargs):
        self.sent = kwargs.get("data")
        return self.reply


def http_reply(body: bytes) -> requests.Response:
    """A 200 response carrying `body`, as requests would hand it to the client."""
    res = requests.Response()
    res.status_code = 200
    res._content = body
    return res


def median_us(work, repeats: int) -> float:
    """Median over `repeats` samples of the time of one call, in µs; a sample is a batch of calls."""
    start = time.perf_counter_ns()
    work()
    once = max(time.perf_counter_ns() - start, 1)
    batch = max(1, SAMPLE_NS // once)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(batch):
            work()
        samples.append((time.perf_counter_ns() - start) / batch / 1000)
    return statistics.median(samples)


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: peers_wechatpy.py DIR REPEATS", file=sys.stderr)
        return 2
    d = Path(sys.argv[1])
    repeats = int(sys.argv[2])
    merchant = json.loads((d / "merchant.json").read_text())
    req = json.loads((d / "refund_request.json").read_text())
    expected = json.loads((d / "expected.json").read_text())
    refund_reply = http_reply((d / "refund_reply.xml").read_bytes())
    query_reply = http_reply((d / "query_reply_50.xml").read_bytes())
    assert merchant["sign_type"] == "MD5", "wechatpy's client signs requests with MD5"

    client = WeChatPay(merchant["appid"], merchant["api_key"], merchant["mch_id"])
    stub = ReplyStub(refund_reply)
    client._http = stub

    def refund_round():
        # fee_type and refund_account None: wechatpy drops None fields, and our request sends
        # neither (wechatpy still adds op_user_id, its own default).
        data = client.refund.apply(
            total_fee=req["total_fee"],
            refund_fee=req["refund_fee"],
            out_refund_no=req["out_refund_no"],
            out_trade_no=req["out_trade_no"],
            fee_type=None,
            refund_account=None,
            refund_desc=req["refund_desc"],
            notify_url=req["notify_url"],
        )
        assert isinstance(data, dict), "the refund reply did not parse"
        assert client.check_signature(data), "the refund reply's signature did not verify"
        return int(data["refund_fee"])

    def query_reply_50():
        data = client._handle_result(query_reply)
        assert isinstance(data, dict), "the query reply did not parse"
        assert client.check_signature(data), "the query reply's signature did not verify"
        # wechatpy hands back the flat dict; reading the records is the caller's job, done here
        # the way a caller would, for the fields our side types.
        records = []
        for n in range(int(data["refund_count"])):
            coupons = [
                (
                    data.get(f"coupon_type_{n}_{m}"),
                    data.get(f"coupon_refund_id_{n}_{m}"),
                    int(data[f"coupon_refund_fee_{n}_{m}"]),
                )
                for m in range(int(data.get(f"coupon_refund_count_{n}") or 0))
            ]
            records.append(
                (
                    data[f"out_refund_no_{n}"],
                    data[f"refund_id_{n}"],
                    int(data[f"refund_fee_{n}"]),
                    data[f"refund_status_{n}"],
                    coupons,
                )
            )
        return records

    # The work must be the work Rust did on the same bytes.
    assert refund_round() == expected["refund_fee"], "refund_fee differs from Rust's"
    sent = stub.sent.decode("utf-8")
    for field in ("out_refund_no", "out_trade_no", "refund_desc"):
        assert req[field] in sent, f"the request does not carry {field}"
    records = query_reply_50()
    assert len(records) == expected["records"], "record count differs from Rust's"
    assert sum(r[2] for r in records) == expected["records_refund_fee"], "record fees differ"
    assert sum(len(r[4]) for r in records) == expected["coupons"], "coupon count differs"
    # Our request's signature, recomputed by wechatpy's calculate_signature, must be the same.
    ours = xmltodict.parse((d / "refund_request.xml").read_text(encoding="utf-8"))["xml"]
    ours_sign = ours.pop("sign")
    assert calculate_signature(ours, merchant["api_key"]) == ours_sign, "signatures disagree"

    print(f"median_us refund_round {median_us(refund_round, repeats):.2f}")
    print(f"median_us query_reply_50 {median_us(query_reply_50, repeats):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
