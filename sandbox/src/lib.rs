//! `wxpay-sandbox`: a local stand-in for api.mch.weixin.qq.com (refund apply and query).
