//! Reading X.509 certificates: the subject CN (the merchant's mch_id on a client certificate) and
//! whether a certificate on disk was issued by a given CA.

/// The subject CN of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// True when `cert_der`'s issuer name is `ca_der`'s subject (used only to decide whether files on
/// disk can be reused; the TLS layer does the real chain verification).
pub fn issued_by(cert_der: &[u8], ca_der: &[u8]) -> bool {
    match (
        x509_parser::parse_x509_certificate(cert_der),
        x509_parser::parse_x509_certificate(ca_der),
    ) {
        (Ok((_, c)), Ok((_, ca))) => c.issuer().as_raw() == ca.subject().as_raw(),
        _ => false,
    }
}
