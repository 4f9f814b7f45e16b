//! The merchant's signing identity (appid, mch_id, APIv2 key, sign type) and the signed-envelope
//! builder every request goes through.

use crate::ids::{AppId, MchId, NonceStr};
use crate::sign::{self, ApiKey, SignType};
use crate::xml::{self, XmlError};

/// What every request carries and is signed with. Debug never shows the key ([`ApiKey`] is redacted).
#[derive(Clone, Debug)]
pub struct MerchantKeys {
    pub appid: AppId,
    pub mch_id: MchId,
    pub api_key: ApiKey,
    pub sign_type: SignType,
}

impl MerchantKeys {
    /// Adds `appid`, `mch_id`, `nonce_str`, `sign_type` to the business fields, signs them and
    /// encodes the `<xml>` body. `sign_type` is always sent (and so signed), with its wire string.
    pub fn signed_xml(
        &self,
        business: &[(&str, &str)],
        nonce: &NonceStr,
    ) -> Result<String, XmlError> {
        let mut fields: Vec<(&str, &str)> = Vec::with_capacity(business.len() + 5);
        fields.push(("appid", self.appid.as_str()));
        fields.push(("mch_id", self.mch_id.as_str()));
        fields.push(("nonce_str", nonce.as_str()));
        fields.push(("sign_type", self.sign_type.as_str()));
        fields.extend(business.iter().filter(|(_, v)| !v.is_empty()).copied());
        let signature = sign::sign(fields.iter().copied(), &self.api_key, self.sign_type);
        fields.push(("sign", &signature));
        xml::encode(fields)
    }
}
