//! The `<xml>` wire format: encode requests/replies with CDATA; decode into a flat map that keeps
//! every field (unknown ones are signed too). DOCTYPE/entities are refused and bodies are capped.

use std::collections::BTreeMap;

use quick_xml::Reader;
use quick_xml::events::Event;
use thiserror::Error;

/// Largest body we parse (WeChat's replies are a few KiB; a 50-refund query is under 20 KiB).
pub const MAX_BODY: usize = 64 * 1024;
/// More fields than any real message has (a 10-record query page with coupons is under 300).
const MAX_FIELDS: usize = 2_000;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum XmlError {
    #[error("XML body is {0} bytes, over the {MAX_BODY}-byte limit")]
    TooLarge(usize),
    #[error("XML body is empty")]
    Empty,
    #[error("XML with a DOCTYPE or entity declaration is refused")]
    Doctype,
    #[error("malformed XML: {0}")]
    Malformed(String),
    #[error("expected root element <{expected}>, found <{found}>")]
    WrongRoot {
        expected: &'static str,
        found: String,
    },
    #[error("element <{0}> is nested deeper than a flat message allows")]
    Nested(String),
    #[error("field <{0}> appears twice")]
    Duplicate(String),
    #[error("too many fields (over {MAX_FIELDS})")]
    TooManyFields,
    #[error("field name {0:?} is not a valid element name")]
    BadName(String),
    #[error("value of <{0}> contains \"]]>\", which cannot be sent inside CDATA")]
    CdataTerminator(String),
}

/// A decoded flat message: field name → text, ordered by name (which is also signing order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XmlMap(BTreeMap<String, String>);

impl XmlMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The value, treating an empty element as absent.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.0.insert(name.into(), value.into())
    }

    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

impl FromIterator<(String, String)> for XmlMap {
    fn from_iter<T: IntoIterator<Item = (String, String)>>(iter: T) -> Self {
        XmlMap(iter.into_iter().collect())
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// Encodes fields as `<xml><name><![CDATA[value]]></name>…</xml>`, in the order given.
/// A value containing `]]>` is refused, never mangled: it would change what was signed.
pub fn encode<'a>(
    fields: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<String, XmlError> {
    encode_root("xml", fields)
}

/// As [`encode`] with another root (the notification's encrypted `<root>` document).
pub fn encode_root<'a>(
    root: &str,
    fields: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<String, XmlError> {
    let mut out = String::with_capacity(512);
    out.push('<');
    out.push_str(root);
    out.push('>');
    for (name, value) in fields {
        if !valid_name(name) {
            return Err(XmlError::BadName(name.chars().take(64).collect()));
        }
        if value.contains("]]>") {
            return Err(XmlError::CdataTerminator(name.to_string()));
        }
        out.push('<');
        out.push_str(name);
        out.push_str("><![CDATA[");
        out.push_str(value);
        out.push_str("]]></");
        out.push_str(name);
        out.push('>');
    }
    out.push_str("</");
    out.push_str(root);
    out.push('>');
    Ok(out)
}

/// Decodes a flat `<xml>` message.
pub fn decode(body: &[u8]) -> Result<XmlMap, XmlError> {
    decode_root(body, "xml")
}

/// Decodes a flat message whose root element must be `root`.
pub fn decode_root(body: &[u8], root: &'static str) -> Result<XmlMap, XmlError> {
    if body.len() > MAX_BODY {
        return Err(XmlError::TooLarge(body.len()));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(XmlError::Empty);
    }
    // A declaration can hide inside the prolog in ways a streaming parser reports late; refuse the
    // markers outright (no legitimate WeChat message contains them outside CDATA).
    if contains_ci(body, b"<!DOCTYPE") || contains_ci(body, b"<!ENTITY") {
        return Err(XmlError::Doctype);
    }
    let text =
        std::str::from_utf8(body).map_err(|_| XmlError::Malformed("body is not UTF-8".into()))?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(false);
    reader.config_mut().check_end_names = true;

    let mut map = BTreeMap::new();
    let mut depth = 0usize;
    let mut seen_root = false;
    let mut current: Option<String> = None;
    let mut value = String::new();

    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Malformed(truncate(e.to_string())))?;
        match event {
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                depth += 1;
                match depth {
                    1 => {
                        if seen_root {
                            return Err(XmlError::Malformed("more than one root element".into()));
                        }
                        if name != root {
                            return Err(XmlError::WrongRoot {
                                expected: root,
                                found: truncate(name),
                            });
                        }
                        seen_root = true;
                    }
                    2 => {
                        current = Some(name);
                        value.clear();
                    }
                    _ => return Err(XmlError::Nested(truncate(name))),
                }
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                match depth {
                    0 => {
                        if name != root {
                            return Err(XmlError::WrongRoot {
                                expected: root,
                                found: truncate(name),
                            });
                        }
                        seen_root = true;
                    }
                    1 => insert(&mut map, name, String::new())?,
                    _ => return Err(XmlError::Nested(truncate(name))),
                }
            }
            Event::Text(t) => {
                if depth == 2 {
                    let s = t
                        .unescape()
                        .map_err(|e| XmlError::Malformed(truncate(e.to_string())))?;
                    value.push_str(&s);
                } else if depth == 1 || depth == 0 {
                    let raw = t
                        .unescape()
                        .map_err(|e| XmlError::Malformed(truncate(e.to_string())))?;
                    if !raw.trim().is_empty() {
                        return Err(XmlError::Malformed("text outside a field".into()));
                    }
                }
            }
            Event::CData(c) => {
                if depth != 2 {
                    return Err(XmlError::Malformed("CDATA outside a field".into()));
                }
                let s = std::str::from_utf8(&c)
                    .map_err(|_| XmlError::Malformed("CDATA is not UTF-8".into()))?;
                value.push_str(s);
            }
            Event::End(_) => {
                if depth == 2
                    && let Some(name) = current.take()
                {
                    insert(&mut map, name, std::mem::take(&mut value))?;
                }
                depth = depth.saturating_sub(1);
            }
            Event::Eof => break,
        }
    }
    if !seen_root {
        return Err(XmlError::Malformed("no root element".into()));
    }
    if depth != 0 {
        return Err(XmlError::Malformed("unexpected end of document".into()));
    }
    Ok(XmlMap(map))
}

fn insert(map: &mut BTreeMap<String, String>, name: String, value: String) -> Result<(), XmlError> {
    if map.len() >= MAX_FIELDS {
        return Err(XmlError::TooManyFields);
    }
    if map.contains_key(&name) {
        return Err(XmlError::Duplicate(truncate(name)));
    }
    map.insert(name, value);
    Ok(())
}

fn truncate(s: String) -> String {
    if s.len() <= 80 {
        s
    } else {
        s.chars().take(80).collect::<String>() + "…"
    }
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_cdata_and_escapes() {
        let xml = encode([("a", "1"), ("desc", "<b>&\"中文\"</b>"), ("empty", "")]).unwrap();
        assert_eq!(
            xml,
            "<xml><a><![CDATA[1]]></a><desc><![CDATA[<b>&\"中文\"</b>]]></desc><empty><![CDATA[]]></empty></xml>"
        );
        let map = decode(xml.as_bytes()).unwrap();
        assert_eq!(map.get("desc"), Some("<b>&\"中文\"</b>"));
        assert_eq!(map.get("empty"), Some(""));
        assert_eq!(map.non_empty("empty"), None);
    }

    #[test]
    fn decodes_plain_text_entities_whitespace_and_empty_elements() {
        let body = "<?xml version=\"1.0\"?>\n<xml>\n  <return_code>SUCCESS</return_code>\n  <msg>a &amp; b &lt;c&gt;</msg>\n  <x/>\n</xml>\n";
        let map = decode(body.as_bytes()).unwrap();
        assert_eq!(map.get("return_code"), Some("SUCCESS"));
        assert_eq!(map.get("msg"), Some("a & b <c>"));
        assert_eq!(map.get("x"), Some(""));
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn refuses_cdata_terminator() {
        assert_eq!(
            encode([("refund_desc", "a]]>b")]),
            Err(XmlError::CdataTerminator("refund_desc".into()))
        );
    }

    #[test]
    fn refuses_bad_names() {
        assert!(matches!(encode([("a b", "1")]), Err(XmlError::BadName(_))));
        assert!(matches!(encode([("<x>", "1")]), Err(XmlError::BadName(_))));
    }

    #[test]
    fn refuses_xxe_and_doctype() {
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><a>&xxe;</a></xml>"#;
        assert_eq!(decode(xxe.as_bytes()), Err(XmlError::Doctype));
        let lower = r#"<!doctype xml><xml><a>1</a></xml>"#;
        assert_eq!(decode(lower.as_bytes()), Err(XmlError::Doctype));
        // An undeclared entity reference is an error too, not an empty string.
        assert!(matches!(
            decode(b"<xml><a>&xxe;</a></xml>"),
            Err(XmlError::Malformed(_))
        ));
    }

    #[test]
    fn refuses_oversize_nested_duplicate_wrong_root_and_garbage() {
        let big = format!("<xml><a>{}</a></xml>", "x".repeat(MAX_BODY));
        assert!(matches!(decode(big.as_bytes()), Err(XmlError::TooLarge(_))));
        assert!(matches!(
            decode(b"<xml><a><b>1</b></a></xml>"),
            Err(XmlError::Nested(_))
        ));
        assert!(matches!(
            decode(b"<xml><a>1</a><a>2</a></xml>"),
            Err(XmlError::Duplicate(_))
        ));
        assert!(matches!(
            decode(b"<root><a>1</a></root>"),
            Err(XmlError::WrongRoot { .. })
        ));
        assert_eq!(decode(b"  "), Err(XmlError::Empty));
        for garbage in [
            &b"<html><body>502 Bad Gateway</body></html>"[..],
            b"<xml><a>1</b></xml>",
            b"<xml><a>1",
            b"\xff\xfe",
            b"not xml at all",
        ] {
            assert!(
                decode(garbage).is_err(),
                "{:?}",
                String::from_utf8_lossy(garbage)
            );
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        use proptest::prelude::*;
        proptest!(|(bytes in proptest::collection::vec(any::<u8>(), 0..512))| {
            let _ = decode(&bytes);
        });
        proptest!(|(s in "<xml>(<[a-z]{1,3}>[^<]{0,8}</[a-z]{1,3}>){0,5}</xml>")| {
            let _ = decode(s.as_bytes());
        });
    }
}
