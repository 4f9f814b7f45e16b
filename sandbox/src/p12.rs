//! Writes `apiclient_cert.p12` in the OpenSSL 1.x default layout WeChat's files are believed to use
//! (docs/PROTOCOL.md "Merchant certificate"): certificates under pbeWithSHA1And40BitRC2-CBC, the key under
//! pbeWithSHA1And3-KeyTripleDES-CBC, SHA-1 MAC.
//!
//! `p12-keystore` writes one algorithm for everything, so we write the file twice (RC2-40 and 3DES),
//! splice the RC2-40 certificate safe with the 3DES key safe at the DER level, and recompute the
//! SHA-1 MAC (RFC 7292 appendix B key derivation) over the new authenticated safe.

use hmac::{KeyInit, Mac};
use p12_keystore::{
    Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey,
    PrivateKeyChain,
};
use sha1::{Digest, Sha1};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum P12Error {
    #[error("p12-keystore: {0}")]
    Keystore(String),
    #[error("unexpected PKCS#12 structure: {0}")]
    Structure(&'static str),
}

/// Iterations as OpenSSL 1.x used by default.
const ITERATIONS: u32 = 2048;

/// A PKCS#12 file holding `key_der` (PKCS#8) and `cert_der` followed by `chain`.
pub fn write_legacy(
    cert_der: &[u8],
    key_der: &[u8],
    chain: &[&[u8]],
    password: &str,
) -> Result<Vec<u8>, P12Error> {
    let ks_err = |e: p12_keystore::error::Error| P12Error::Keystore(e.to_string());
    let mut certs = vec![Certificate::from_der(cert_der).map_err(ks_err)?];
    for c in chain {
        certs.push(Certificate::from_der(c).map_err(ks_err)?);
    }
    let key = PrivateKey::from_der(key_der).map_err(ks_err)?;
    // The local key id is conventionally the SHA-1 of the leaf certificate.
    let local_key_id = Sha1::digest(cert_der).to_vec();
    let mut ks = KeyStore::new();
    ks.add_entry(
        "apiclient",
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, certs)),
    );
    let write = |alg| {
        ks.writer(password)
            .encryption_algorithm(alg)
            .encryption_iterations(ITERATIONS)
            .mac_algorithm(MacAlgorithm::HmacSha1)
            .mac_iterations(ITERATIONS)
            .write()
            .map_err(ks_err)
    };
    let rc2 = write(EncryptionAlgorithm::PbeWithShaAnd40BitRc4Cbc)?;
    let des = write(EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)?;

    let (data_oid, rc2_safes) = auth_safes(&rc2)?;
    let (_, des_safes) = auth_safes(&des)?;
    let (Some(cert_safe), Some(key_safe)) = (rc2_safes.first(), des_safes.get(1)) else {
        return Err(P12Error::Structure(
            "expected a certificate safe and a key safe",
        ));
    };
    let mut safes = Vec::new();
    safes.extend_from_slice(cert_safe);
    safes.extend_from_slice(key_safe);
    let auth_safe = tlv(0x30, &safes);

    let mut content_info = Vec::new();
    content_info.extend_from_slice(&data_oid);
    content_info.extend_from_slice(&tlv(0xa0, &tlv(0x04, &auth_safe)));
    let content_info = tlv(0x30, &content_info);

    let salt: [u8; 8] = rand::random();
    let mac_key = pkcs12_kdf_sha1(password, &salt, 3, ITERATIONS, 20);
    let mut mac = <hmac::Hmac<Sha1> as KeyInit>::new_from_slice(&mac_key)
        .map_err(|_| P12Error::Structure("HMAC key"))?;
    mac.update(&auth_safe);
    let digest = mac.finalize().into_bytes();
    // SEQUENCE { DigestInfo { AlgorithmIdentifier { sha1, NULL }, digest }, salt, iterations }
    let sha1_alg = tlv(
        0x30,
        &[tlv(0x06, &[0x2b, 0x0e, 0x03, 0x02, 0x1a]), vec![0x05, 0x00]].concat(),
    );
    let digest_info = tlv(0x30, &[sha1_alg, tlv(0x04, &digest)].concat());
    let mac_data = tlv(
        0x30,
        &[digest_info, tlv(0x04, &salt), der_uint(ITERATIONS)].concat(),
    );

    Ok(tlv(0x30, &[der_uint(3), content_info, mac_data].concat()))
}

/// The `data` OID TLV and the encoded ContentInfos of the authenticated safe of a PFX.
fn auth_safes(pfx: &[u8]) -> Result<(Vec<u8>, Vec<Vec<u8>>), P12Error> {
    let bad = P12Error::Structure;
    let (pfx_body, _) = read_tlv(pfx, 0x30).ok_or(bad("PFX"))?;
    let (_version, rest) = read_tlv(pfx_body, 0x02).ok_or(bad("version"))?;
    let (ci, _) = read_tlv(rest, 0x30).ok_or(bad("authSafe"))?;
    let oid_len = ci.len() - read_tlv(ci, 0x06).ok_or(bad("content type"))?.1.len();
    let (data_oid, rest) = ci.split_at(oid_len);
    let (explicit, _) = read_tlv(rest, 0xa0).ok_or(bad("[0]"))?;
    let (octets, _) = read_tlv(explicit, 0x04).ok_or(bad("octets"))?;
    let (mut seq, _) = read_tlv(octets, 0x30).ok_or(bad("AuthenticatedSafe"))?;
    let mut out = Vec::new();
    while !seq.is_empty() {
        let (_, rest) = read_tlv(seq, 0x30).ok_or(bad("ContentInfo"))?;
        out.push(seq[..seq.len() - rest.len()].to_vec());
        seq = rest;
    }
    Ok((data_oid.to_vec(), out))
}

/// Reads one definite-length TLV with the given tag: (contents, rest).
fn read_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(contents);
    out
}

fn der_uint(v: u32) -> Vec<u8> {
    let mut bytes: Vec<u8> = v
        .to_be_bytes()
        .iter()
        .copied()
        .skip_while(|b| *b == 0)
        .collect();
    if bytes.first().is_none_or(|b| *b & 0x80 != 0) {
        bytes.insert(0, 0);
    }
    tlv(0x02, &bytes)
}

/// RFC 7292 appendix B.2 with SHA-1 (u = 20, v = 64); `id` 3 derives MAC keys.
fn pkcs12_kdf_sha1(password: &str, salt: &[u8], id: u8, iterations: u32, n: usize) -> Vec<u8> {
    const V: usize = 64;
    let mut pass: Vec<u8> = password.encode_utf16().flat_map(u16::to_be_bytes).collect();
    pass.extend_from_slice(&[0, 0]);
    let fill = |src: &[u8]| -> Vec<u8> {
        if src.is_empty() {
            return Vec::new();
        }
        let len = V * src.len().div_ceil(V);
        src.iter().copied().cycle().take(len).collect()
    };
    let mut i_buf = fill(salt);
    i_buf.extend(fill(&pass));
    let d = [id; V];
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut a = Sha1::new().chain_update(d).chain_update(&i_buf).finalize();
        for _ in 1..iterations {
            a = Sha1::digest(a);
        }
        out.extend_from_slice(&a);
        let b: Vec<u8> = a.iter().copied().cycle().take(V).collect();
        for block in i_buf.chunks_mut(V) {
            // block = (block + b + 1) mod 2^(8V)
            let mut carry = 1u16;
            for k in (0..V).rev() {
                let sum = u16::from(block[k]) + u16::from(b[k]) + carry;
                block[k] = sum as u8;
                carry = sum >> 8;
            }
        }
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_helpers_round_trip_long_lengths() {
        // GIVEN contents longer than 255 bytes WHEN wrapped THEN the long form reads back.
        let body = vec![7u8; 300];
        let enc = tlv(0x04, &body);
        assert_eq!(&enc[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (c, rest) = read_tlv(&enc, 0x04).unwrap();
        assert_eq!(c, &body[..]);
        assert!(rest.is_empty());
        assert_eq!(der_uint(2048), vec![0x02, 0x02, 0x08, 0x00]);
        assert_eq!(der_uint(128), vec![0x02, 0x02, 0x00, 0x80]);
        assert!(read_tlv(&[0x04, 0x85, 1, 1, 1, 1, 1], 0x04).is_none());
        assert!(read_tlv(&[0x04, 0x05, 1], 0x04).is_none());
    }
}
