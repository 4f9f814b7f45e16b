//! The `<xml>` wire format: encode requests/replies with CDATA; decode into a flat map that keeps
//! every field (unknown ones are signed too). DOCTYPE/entities are refused and bodies are capped.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

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

/// A decoded flat message: field name → text, ordered by name in byte order (which is also signing
/// order).
///
/// One text buffer holds every name and value; a sorted index of spans points into it, so a decoded
/// reply costs three allocations however many fields it has, and a lookup is a binary search. The
/// buffer and index are shared behind an `Arc`: typed replies keep the whole map in their `fields`,
/// and that clone is a reference count. Changing a shared map copies it first.
#[derive(Clone, Default)]
pub struct XmlMap(Arc<Fields>);

/// The map's storage. `text` may hold bytes no span points at (the markup of a decoded body, values
/// replaced or removed); `dead` counts the latter, so that many changes cannot grow it for ever.
#[derive(Clone, Default)]
struct Fields {
    text: String,
    spans: Vec<Span>,
    dead: usize,
}

/// One field as byte ranges of [`Fields::text`] (always on character boundaries), with the first
/// sixteen bytes of its name as a big-endian number: most comparisons while sorting and searching
/// are decided by that number alone.
#[derive(Clone, Copy, Debug)]
struct Span {
    key: u128,
    name_start: usize,
    name_end: usize,
    value_start: usize,
    value_end: usize,
}

/// Bytes of a name in its [`Span::key`].
const KEY_BYTES: usize = 16;

/// The first sixteen bytes of the name at `text[start..end]`, zero-padded, as a big-endian number.
/// Zero is the smallest byte, so comparing keys, then the rest of the names, then their lengths, is
/// byte order.
fn key_at(text: &[u8], start: usize, end: usize) -> u128 {
    let len = end - start;
    // A decoded name is followed by at least its end tag: read sixteen bytes and mask the excess.
    if let Some(window) = text.get(start..start + KEY_BYTES)
        && let Ok(bytes) = <[u8; KEY_BYTES]>::try_from(window)
    {
        let word = u128::from_be_bytes(bytes);
        return if len >= KEY_BYTES {
            word
        } else {
            word & !(u128::MAX >> (8 * len))
        };
    }
    prefix_key(&text[start..end])
}

/// As [`key_at`] for a name on its own.
fn prefix_key(name: &[u8]) -> u128 {
    let mut k = [0u8; KEY_BYTES];
    for (d, s) in k.iter_mut().zip(name) {
        *d = *s;
    }
    u128::from_be_bytes(k)
}

/// Byte order of two spans' names within `text`, the keys first.
fn cmp_names(text: &[u8], x: &Span, y: &Span) -> Ordering {
    x.key.cmp(&y.key).then_with(|| {
        let tail = |s: &Span| &text[(s.name_start + KEY_BYTES).min(s.name_end)..s.name_end];
        tail(x)
            .cmp(tail(y))
            .then((x.name_end - x.name_start).cmp(&(y.name_end - y.name_start)))
    })
}

impl Span {
    fn new(
        name_start: usize,
        name_end: usize,
        value_start: usize,
        value_end: usize,
        text: &[u8],
    ) -> Span {
        Span {
            key: key_at(text, name_start, name_end),
            name_start,
            name_end,
            value_start,
            value_end,
        }
    }
}

impl Fields {
    fn name(&self, s: &Span) -> &str {
        &self.text[s.name_start..s.name_end]
    }

    fn value(&self, s: &Span) -> &str {
        &self.text[s.value_start..s.value_end]
    }

    /// The index of `name` in `spans`, or where it would go.
    fn find(&self, name: &str) -> Result<usize, usize> {
        let name = name.as_bytes();
        let key = prefix_key(name);
        let tail = &name[KEY_BYTES.min(name.len())..];
        let text = self.text.as_bytes();
        self.spans.binary_search_by(|s| {
            s.key.cmp(&key).then_with(|| {
                text[(s.name_start + KEY_BYTES).min(s.name_end)..s.name_end]
                    .cmp(tail)
                    .then((s.name_end - s.name_start).cmp(&name.len()))
            })
        })
    }

    /// Every field as bytes, in name order (for signing: no character-boundary checks).
    fn raw(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let text = self.text.as_bytes();
        self.spans.iter().map(move |s| {
            (
                &text[s.name_start..s.name_end],
                &text[s.value_start..s.value_end],
            )
        })
    }

    fn push_text(&mut self, name: &str, value: &str) -> Span {
        let name_start = self.text.len();
        self.text.push_str(name);
        let value_start = self.text.len();
        self.text.push_str(value);
        Span::new(
            name_start,
            value_start,
            value_start,
            self.text.len(),
            self.text.as_bytes(),
        )
    }

    fn insert(&mut self, name: &str, value: &str) -> Option<String> {
        let span = self.push_text(name, value);
        match self.find(name) {
            Ok(i) => {
                let old = self.spans[i];
                let previous = self.value(&old).to_string();
                self.spans[i] = span;
                self.forget(&old);
                Some(previous)
            }
            Err(i) => {
                self.spans.insert(i, span);
                None
            }
        }
    }

    /// Counts a span's bytes as dead and rewrites the text once most of it is.
    fn forget(&mut self, old: &Span) {
        self.dead += (old.name_end - old.name_start) + (old.value_end - old.value_start);
        if self.dead > 4096 && self.dead > self.text.len() / 2 {
            let mut fresh = Fields::default();
            fresh.text.reserve(self.text.len() - self.dead);
            fresh.spans.reserve(self.spans.len());
            for s in &self.spans {
                let span = fresh.push_text(self.name(s), self.value(s));
                fresh.spans.push(span);
            }
            *self = fresh;
        }
    }
}

impl XmlMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        let f = &*self.0;
        f.find(name).ok().map(|i| f.value(&f.spans[i]))
    }

    /// The value, treating an empty element as absent.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> Option<String> {
        let (name, value) = (name.into(), value.into());
        Arc::make_mut(&mut self.0).insert(&name, &value)
    }

    pub fn remove(&mut self, name: &str) -> Option<String> {
        // Look first: removing an absent name must not copy a shared map.
        let i = self.0.find(name).ok()?;
        let f = Arc::make_mut(&mut self.0);
        let old = f.spans.remove(i);
        let previous = f.value(&old).to_string();
        f.forget(&old);
        Some(previous)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.find(name).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.spans.is_empty()
    }

    /// Every field in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + DoubleEndedIterator {
        let f = &*self.0;
        f.spans.iter().map(move |s| (f.name(s), f.value(s)))
    }

    /// Every field as bytes, in name order.
    pub(crate) fn raw_iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.0.raw()
    }

    /// Every field, the name as bytes, in name order.
    pub(crate) fn iter_byte_names(&self) -> impl Iterator<Item = (&[u8], &str)> {
        let f = &*self.0;
        f.spans
            .iter()
            .map(move |s| (&f.text.as_bytes()[s.name_start..s.name_end], f.value(s)))
    }

    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> + DoubleEndedIterator {
        let f = &*self.0;
        f.spans.iter().map(move |s| f.name(s))
    }

    /// Builds a map from fields already sorted by name, without duplicates (the reference decoder's
    /// `BTreeMap`).
    fn from_sorted(fields: BTreeMap<String, String>) -> XmlMap {
        let mut f = Fields {
            text: String::with_capacity(fields.iter().map(|(k, v)| k.len() + v.len()).sum()),
            spans: Vec::with_capacity(fields.len()),
            dead: 0,
        };
        for (k, v) in &fields {
            let span = f.push_text(k, v);
            f.spans.push(span);
        }
        XmlMap(Arc::new(f))
    }
}

impl PartialEq for XmlMap {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.len() == other.len() && self.iter().eq(other.iter()))
    }
}

impl Eq for XmlMap {}

/// As the `BTreeMap` it replaced printed it: `XmlMap({"name": "value", …})`.
impl fmt::Debug for XmlMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Entries<'a>(&'a XmlMap);
        impl fmt::Debug for Entries<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map().entries(self.0.iter()).finish()
            }
        }
        f.debug_tuple("XmlMap").field(&Entries(self)).finish()
    }
}

/// A later field of the same name replaces an earlier one, as in a `BTreeMap`.
impl FromIterator<(String, String)> for XmlMap {
    fn from_iter<T: IntoIterator<Item = (String, String)>>(iter: T) -> Self {
        let mut f = Fields::default();
        for (k, v) in iter {
            let span = f.push_text(&k, &v);
            f.spans.push(span);
        }
        // Stable, so that among equal names the last one given is last.
        let text = f.text.as_bytes();
        f.spans.sort_by(|a, b| cmp_names(text, a, b));
        let mut kept: Vec<Span> = Vec::with_capacity(f.spans.len());
        let mut dead = 0;
        for s in f.spans.drain(..) {
            match kept.last_mut() {
                Some(last)
                    if text[last.name_start..last.name_end] == text[s.name_start..s.name_end] =>
                {
                    dead += (last.name_end - last.name_start) + (last.value_end - last.value_start);
                    *last = s;
                }
                _ => kept.push(s),
            }
        }
        f.spans = kept;
        f.dead = dead;
        XmlMap(Arc::new(f))
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
///
/// The checks on the whole body come first; then the fast decoder reads the shape WeChat sends
/// (`<xml><name><![CDATA[value]]></name>…</xml>`, or plain text without entities). Anything it
/// does not read exactly so, including every refusal, goes to the general quick-xml decoder, whose
/// answer is the one returned: the fast path only ever accepts, with the same result.
pub fn decode_root(body: &[u8], root: &'static str) -> Result<XmlMap, XmlError> {
    if body.len() > MAX_BODY {
        return Err(XmlError::TooLarge(body.len()));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(XmlError::Empty);
    }
    // A declaration can hide inside the prolog in ways a streaming parser reports late; refuse the
    // markers outright (no legitimate WeChat message contains them outside CDATA). The fast decoder
    // gives up on any marker it meets, and every other byte it passes is markup that cannot start
    // one, so the whole body is searched only when it did not take the body.
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(if has_declaration(body) {
            XmlError::Doctype
        } else {
            XmlError::Malformed("body is not UTF-8".into())
        });
    };
    if let Some(map) = decode_flat(text, root) {
        return Ok(map);
    }
    if has_declaration(body) {
        return Err(XmlError::Doctype);
    }
    decode_general(text, root)
}

/// `<!DOCTYPE` or `<!ENTITY` anywhere, in any case.
fn has_declaration(body: &[u8]) -> bool {
    memchr::memchr_iter(b'<', body).any(|i| declaration_at(body, i))
}

/// Whether the `<` at `i` starts `<!DOCTYPE` or `<!ENTITY`, in any case.
fn declaration_at(body: &[u8], i: usize) -> bool {
    let rest = &body[i + 1..];
    rest.first() == Some(&b'!')
        && (rest
            .get(1..8)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"DOCTYPE"))
            || rest
                .get(1..7)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"ENTITY")))
}

/// The bytes of a name the fast decoder reads: ASCII letters, digits and `_`.
const NAME_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'_';
        c += 1;
    }
    t
};

fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

#[inline]
fn skip_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_xml_space(b[i]) {
        i += 1;
    }
    i
}

/// The fast decoder: `root` holding only `<name>value</name>` and `<name/>` fields, separated by
/// nothing but whitespace, each value one CDATA section or plain text without `&`; names of ASCII
/// letters, digits and `_` not starting with a digit; end tags spelled exactly as the start tags;
/// nothing but whitespace around the root. `None` for anything else (prolog, comments, entities,
/// attributes, nesting, duplicates, too many fields, a `<!DOCTYPE` / `<!ENTITY` marker inside a
/// CDATA section, …): the general decoder then decides. Accepting means that the body holds no such
/// marker: outside CDATA every `<` it passed starts a tag or a CDATA section, and plain text ends at
/// a `<`.
fn decode_flat(text: &str, root: &str) -> Option<XmlMap> {
    let b = text.as_bytes();
    let mut i = skip_space(b, 0);
    if b.get(i) != Some(&b'<') || !b[i + 1..].starts_with(root.as_bytes()) {
        return None;
    }
    i += 1 + root.len();
    if b.get(i) != Some(&b'>') {
        return None;
    }
    i += 1;
    // A CDATA field costs at least 27 bytes (`<a><![CDATA[]]></a>` and some value); a guess only.
    let mut fields = Scanned::with_capacity(b.len() / 48);
    loop {
        i = skip_space(b, i);
        if b.get(i) != Some(&b'<') {
            return None;
        }
        i += 1;
        if b.get(i) == Some(&b'/') {
            i += 1;
            if !b[i..].starts_with(root.as_bytes()) || b.get(i + root.len()) != Some(&b'>') {
                return None;
            }
            if skip_space(b, i + root.len() + 1) != b.len() {
                return None;
            }
            break;
        }
        let name_start = i;
        match b.get(i) {
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {}
            _ => return None,
        }
        i += name_len(&b[i..]);
        let name_end = i;
        let name = &b[name_start..name_end];
        match b.get(i) {
            Some(b'>') => i += 1,
            Some(b'/') if b.get(i + 1) == Some(&b'>') => {
                i += 2;
                fields.push(b, name_start, name_end, i, i)?;
                continue;
            }
            _ => return None,
        }
        let (value_start, value_end);
        if b[i..].starts_with(b"<![CDATA[") {
            value_start = i + 9;
            value_end = find_cdata_end(b, value_start)?;
            i = value_end + 3;
        } else {
            value_start = i;
            let len = memchr::memchr2(b'<', b'&', &b[i..])?;
            value_end = i + len;
            if b[value_end] == b'&' {
                return None;
            }
            i = value_end;
        }
        if !b[i..].starts_with(b"</")
            || !b[i + 2..].starts_with(name)
            || b.get(i + 2 + name.len()) != Some(&b'>')
        {
            return None;
        }
        i += 3 + name.len();
        fields.push(b, name_start, name_end, value_start, value_end)?;
    }
    let spans = fields.sorted_unique(b)?;
    Some(XmlMap(Arc::new(Fields {
        text: text.to_owned(),
        spans,
        dead: 0,
    })))
}

/// The fields the fast decoder has read, in document order.
struct Scanned {
    spans: Vec<Span>,
}

/// Name bytes per sorting round: with the span's index in the low 16 bits, one `u128` per name.
const WINDOW: usize = 14;
// The first round's windows are read from the span keys; indexes fit in 16 bits, 0xffff excepted.
const _: () = assert!(KEY_BYTES >= WINDOW + 2 && MAX_FIELDS < 0xffff);

/// The bytes `[at, at + WINDOW)` of the name `text[.., end)`, zero-padded past its end, in the top
/// 112 bits; the low 16 bits are left zero.
#[inline]
fn window_at(text: &[u8], at: usize, end: usize) -> u128 {
    let have = end.saturating_sub(at).min(WINDOW);
    if have == 0 {
        return 0;
    }
    // A decoded name is followed by at least its end tag: read sixteen bytes and mask the excess.
    if let Some(w) = text.get(at..at + 16)
        && let Ok(bytes) = <[u8; 16]>::try_from(w)
    {
        return u128::from_be_bytes(bytes) & !(u128::MAX >> (8 * have));
    }
    let mut bytes = [0u8; 16];
    bytes[..have].copy_from_slice(&text[at..at + have]);
    u128::from_be_bytes(bytes)
}

impl Scanned {
    fn with_capacity(n: usize) -> Scanned {
        Scanned {
            spans: Vec::with_capacity(n),
        }
    }

    /// Adds a field, giving up on more than the general decoder allows (which then says so).
    #[inline]
    fn push(
        &mut self,
        text: &[u8],
        name_start: usize,
        name_end: usize,
        value_start: usize,
        value_end: usize,
    ) -> Option<()> {
        if self.spans.len() >= MAX_FIELDS {
            return None;
        }
        self.spans.push(Span::new(
            name_start,
            name_end,
            value_start,
            value_end,
            text,
        ));
        Some(())
    }

    /// The spans in name order, or `None` when a name appears twice (the general decoder then
    /// reports the first duplicate in document order).
    ///
    /// The names have no NUL byte (the fast decoder reads only letters, digits and `_`), so
    /// zero-padding them is unambiguous and byte order is the order of their 14-byte windows, one
    /// window after the other. Each round sorts plain `u128`s (window, span index): a round over all
    /// names, then one over each run that tied, on the next window. A run whose window is past the
    /// end of every name in it is a set of equal names.
    fn sorted_unique(self, text: &[u8]) -> Option<Vec<Span>> {
        let spans = self.spans;
        let (mut keys, mut todo) = if spans.len() > GROUP_FROM {
            first_round(&spans)?
        } else {
            // Windows of round 0 are the top of each span's key, already read.
            let keys = (0..spans.len()).map(|i| i as u128).collect::<Vec<_>>();
            (keys, vec![(0, spans.len(), 0)])
        };
        while let Some((from, to, round)) = todo.pop() {
            let part = &mut keys[from..to];
            for k in part.iter_mut() {
                let i = *k & INDEX;
                let s = &spans[i as usize];
                let window = if round == 0 {
                    s.key & !INDEX
                } else {
                    window_at(text, s.name_start + round * WINDOW, s.name_end)
                };
                *k = window | i;
            }
            part.sort_unstable();
            let mut run = 0;
            for j in 1..=part.len() {
                if j < part.len() && part[j] >> 16 == part[run] >> 16 {
                    continue;
                }
                if j - run > 1 {
                    if part[run] >> 16 == 0 {
                        return None;
                    }
                    todo.push((from + run, from + j, round + 1));
                }
                run = j;
            }
        }
        Some(keys.iter().map(|&k| spans[(k & INDEX) as usize]).collect())
    }
}

/// The low bits of a sorting key: the index of its span.
const INDEX: u128 = 0xffff;

/// Fields from which the first round groups by hash rather than sorting every name (below it, the
/// table costs more than it saves: an acceptance reply has about twenty).
const GROUP_FROM: usize = 64;

/// Slices of the sorting keys still to order, as (start, end, window number).
type Todo = Vec<(usize, usize, usize)>;

/// The first round, on the first window (the top of each span's key, already read). A reply's names
/// share few first windows (`refund_status_` and `settlement_ref` stand for fifty names each), so
/// the spans are grouped by window in a small hash table and only the distinct windows are sorted;
/// the groups are laid out in that order, each in document order, and every group of two or more
/// is left for the next round.
fn first_round(spans: &[Span]) -> Option<(Vec<u128>, Todo)> {
    const EMPTY: u16 = u16::MAX;
    let slots = (spans.len() * 2).next_power_of_two().max(16);
    let mut table = vec![EMPTY; slots];
    let mut windows: Vec<u128> = Vec::new();
    let mut sizes: Vec<usize> = Vec::new();
    let mut group_of: Vec<u16> = Vec::with_capacity(spans.len());
    for s in spans {
        let w = s.key & !INDEX;
        // Fibonacci hashing of both halves: the top bits of the product index the table.
        let h = ((w >> 64) as u64 ^ (w as u64)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut slot = (h >> (64 - slots.trailing_zeros())) as usize;
        let group = loop {
            match table[slot] {
                EMPTY => {
                    let g = u16::try_from(windows.len()).ok()?;
                    table[slot] = g;
                    windows.push(w);
                    sizes.push(0);
                    break g;
                }
                g if windows[usize::from(g)] == w => break g,
                _ => slot = (slot + 1) & (slots - 1),
            }
        };
        sizes[usize::from(group)] += 1;
        group_of.push(group);
    }
    let mut order: Vec<u128> = windows
        .iter()
        .enumerate()
        .map(|(g, &w)| w | g as u128)
        .collect();
    order.sort_unstable();
    // Where each group starts in the output, and the groups left for the next round.
    let mut starts = vec![0usize; windows.len()];
    let mut todo: Todo = Vec::new();
    let mut at = 0;
    for k in &order {
        let g = (k & INDEX) as usize;
        starts[g] = at;
        if sizes[g] > 1 {
            todo.push((at, at + sizes[g], 1));
        }
        at += sizes[g];
    }
    let mut keys = vec![0u128; spans.len()];
    for (i, &g) in group_of.iter().enumerate() {
        let pos = &mut starts[usize::from(g)];
        keys[*pos] = i as u128;
        *pos += 1;
    }
    Some((keys, todo))
}

// Word-at-a-time scanning: a reply's names and values are mostly shorter than the set-up of a
// vectorised search, so eight bytes are tested at once with integer arithmetic instead.
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` that is zero, the others clear (exact: no borrow between bytes).
#[inline]
fn zero_bytes(w: u64) -> u64 {
    !(((w & !HIGH) + !HIGH) | w) & HIGH
}

/// The high bit of each byte of `w` that is not an ASCII letter, digit or `_`.
#[inline]
fn non_name_bytes(w: u64) -> u64 {
    // On seven-bit bytes, `y + (0x80 - lo)` has the high bit iff `y >= lo`, and no sum carries.
    let y = w & !HIGH;
    let at_least = |v: u64, lo: u8| v + u64::from(0x80 - lo) * ONES;
    let in_range = |v: u64, lo: u8, hi: u8| at_least(v, lo) & !at_least(v, hi + 1);
    let digit = in_range(y, b'0', b'9');
    // Setting bit 5 maps `A`–`Z` onto `a`–`z` and nothing else into that range.
    let letter = in_range(y | (0x20 * ONES), b'a', b'z');
    let underscore = zero_bytes(y ^ (u64::from(b'_') * ONES));
    // Bytes of 0x80 and above are never name bytes.
    !((digit | letter | underscore) & !w) & HIGH
}

/// How many name bytes (ASCII letters, digits, `_`) `b` starts with.
#[inline]
fn name_len(b: &[u8]) -> usize {
    let mut chunks = b.chunks_exact(8);
    let mut n = 0;
    for chunk in chunks.by_ref() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let bad = non_name_bytes(u64::from_le_bytes(bytes));
        if bad != 0 {
            return n + (bad.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + chunks
        .remainder()
        .iter()
        .take_while(|&&c| NAME_BYTE[usize::from(c)])
        .count()
}

/// Where the first `]` or `<` of `b` is.
#[inline]
fn find_bracket_or_lt(b: &[u8]) -> Option<usize> {
    let mut chunks = b.chunks_exact(8);
    let mut n = 0;
    for chunk in chunks.by_ref() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let w = u64::from_le_bytes(bytes);
        let hits =
            zero_bytes(w ^ (u64::from(b']') * ONES)) | zero_bytes(w ^ (u64::from(b'<') * ONES));
        if hits != 0 {
            return Some(n + (hits.trailing_zeros() / 8) as usize);
        }
        n += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b']' || c == b'<')
        .map(|p| n + p)
}

/// Where the `]]>` closing a CDATA section that starts at `from` is; `None` when there is none, or
/// when the section holds a `<!DOCTYPE` / `<!ENTITY` marker (which the caller must refuse).
#[inline]
fn find_cdata_end(b: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        let j = at + find_bracket_or_lt(&b[at..])?;
        if b[j] == b'<' {
            if declaration_at(b, j) {
                return None;
            }
        } else if b[j..].starts_with(b"]]>") {
            return Some(j);
        }
        at = j + 1;
    }
}

/// The general decoder (quick-xml), for every shape the fast one does not take: the reference both
/// must agree with. The body has passed the checks of [`decode_root`].
fn decode_general(text: &str, root: &'static str) -> Result<XmlMap, XmlError> {
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
    Ok(XmlMap::from_sorted(map))
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Bodies of a query page's size, where the first sorting round groups by hash.
        #[test]
        fn large_bodies_agree(
            names in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "a", "refund_fee", "refund_status", "refund_statu", "refund_status_x",
                        "settlement_refund_fee", "settlement_ref", "coupon_refund_fee",
                        "coupon_refund_id", "out_refund_no", "abcdefghijklmn", "abcdefghijklm",
                    ]),
                    0u32..40,
                    proptest::option::of(0u32..3),
                ),
                GROUP_FROM - 4..GROUP_FROM + 120,
            ),
            unique in any::<bool>(),
        ) {
            let mut body = String::from("<xml>");
            let mut seen = std::collections::BTreeSet::new();
            for (i, (base, n, m)) in names.iter().enumerate() {
                let name = match m {
                    Some(m) => format!("{base}_{n}_{m}"),
                    None => format!("{base}_{n}"),
                };
                if !seen.insert(name.clone()) && unique {
                    continue;
                }
                body.push_str(&format!("<{name}><![CDATA[{i}]]></{name}>"));
            }
            body.push_str("</xml>");
            let general = decode_general(&body, "xml");
            if unique {
                prop_assert!(fast(&body).is_some());
            }
            match fast(&body) {
                Some(map) => prop_assert_eq!(Ok(map), general),
                // Only a duplicate makes this shape fall back.
                None => prop_assert!(matches!(general, Err(XmlError::Duplicate(_)))),
            }
        }

        #[test]
        fn word_scans_match_byte_scans(b in proptest::collection::vec(
            prop_oneof![any::<u8>(), proptest::sample::select(b"aZz09_]<>`@[{/:\x7f\x80\xff".to_vec())],
            0..40,
        )) {
            prop_assert_eq!(
                name_len(&b),
                b.iter().take_while(|&&c| c.is_ascii_alphanumeric() || c == b'_').count()
            );
            prop_assert_eq!(find_bracket_or_lt(&b), b.iter().position(|&c| c == b']' || c == b'<'));
        }
    }

    #[test]
    fn name_bytes_are_exactly_letters_digits_and_underscore() {
        for c in 0..=255u8 {
            let word = u64::from_le_bytes([b'a', c, b'a', b'a', b'a', b'a', b'a', b'a']);
            let is_name = c.is_ascii_alphanumeric() || c == b'_';
            assert_eq!(non_name_bytes(word) == 0, is_name, "{c:#x}");
            assert_eq!(NAME_BYTE[usize::from(c)], is_name, "{c:#x}");
            assert_eq!(name_len(&[c; 9]), if is_name { 9 } else { 0 }, "{c:#x}");
        }
    }

    /// The old declaration check, kept as the reference for [`has_declaration`].
    fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    }

    /// What `decode` answered before the fast path: the same body checks, then quick-xml.
    fn reference(body: &[u8], root: &'static str) -> Result<XmlMap, XmlError> {
        if body.len() > MAX_BODY {
            return Err(XmlError::TooLarge(body.len()));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(XmlError::Empty);
        }
        if contains_ci(body, b"<!DOCTYPE") || contains_ci(body, b"<!ENTITY") {
            return Err(XmlError::Doctype);
        }
        let text = std::str::from_utf8(body)
            .map_err(|_| XmlError::Malformed("body is not UTF-8".into()))?;
        decode_general(text, root)
    }

    fn fast(body: &str) -> Option<XmlMap> {
        decode_flat(body, "xml")
    }

    #[test]
    fn wechat_shaped_bodies_take_the_fast_path() {
        // GIVEN our own encoding, with markup, entities-to-be, Chinese and empty values
        let fields = [
            ("return_code", "SUCCESS"),
            ("desc", "<b>&amp;\"中文\"</b> ]] >"),
            ("empty", ""),
            ("coupon_refund_fee_0_0", "0"),
        ];
        let body = encode(fields).unwrap();
        // THEN the fast decoder reads it, and agrees with the general one
        let map = fast(&body).expect("fast path");
        assert_eq!(map, decode_general(&body, "xml").unwrap());
        assert_eq!(map.get("desc"), Some("<b>&amp;\"中文\"</b> ]] >"));
        // GIVEN plain text, empty elements and whitespace between fields THEN fast too
        let body = "\n<xml>\n  <a>1</a>\r\n\t<b/><c></c><d><![CDATA[]]></d>\n</xml>\n";
        let map = fast(body).expect("fast path");
        assert_eq!(map, decode_general(body, "xml").unwrap());
        assert_eq!(
            map.iter().collect::<Vec<_>>(),
            [("a", "1"), ("b", ""), ("c", ""), ("d", "")]
        );
        // GIVEN the decrypted notification's root THEN fast with that root only
        let inner = encode_root("root", [("refund_status", "SUCCESS")]).unwrap();
        assert!(decode_flat(&inner, "root").is_some());
        assert!(decode_flat(&inner, "xml").is_none());
        assert_eq!(
            decode_root(inner.as_bytes(), "root")
                .unwrap()
                .get("refund_status"),
            Some("SUCCESS")
        );
    }

    #[test]
    fn unusual_shapes_go_to_the_general_decoder_with_the_same_result() {
        for body in [
            "<?xml version=\"1.0\"?><xml><a>1</a></xml>",
            "<xml><a>a &amp; b</a></xml>",
            "<xml><!-- c --><a>1</a></xml>",
            "<xml><a x=\"1\">1</a></xml>",
            "<xml><a >1</a></xml>",
            "<xml><a>1</a ></xml>",
            "<xml><a><![CDATA[x]]>y</a></xml>",
            "<xml><a> <![CDATA[x]]></a></xml>",
            "<xml><a:b>1</a:b></xml>",
            "<xml/>",
            "\u{feff}<xml><a>1</a></xml>",
        ] {
            assert!(fast(body).is_none(), "{body}");
            assert_eq!(
                decode(body.as_bytes()),
                reference(body.as_bytes(), "xml"),
                "{body}"
            );
        }
        assert_eq!(
            decode(b"<xml><a>a &amp; b</a></xml>").unwrap().get("a"),
            Some("a & b")
        );
    }

    /// Every refusal, in the shape the fast decoder reads: it never accepts, and `decode` gives the
    /// general decoder's error.
    #[test]
    fn refusals_in_the_fast_shape() {
        let many = |n: usize| {
            let mut s = String::from("<xml>");
            for i in 0..n {
                s.push_str(&format!("<f{i}><![CDATA[v]]></f{i}>"));
            }
            s + "</xml>"
        };
        let cases: Vec<(String, XmlError)> = vec![
            (
                "<xml><a><![CDATA[1]]></a><b><![CDATA[2]]></b><a><![CDATA[3]]></a></xml>".into(),
                XmlError::Duplicate("a".into()),
            ),
            (
                "<xml><a><b><![CDATA[1]]></b></a></xml>".into(),
                XmlError::Nested("b".into()),
            ),
            (many(MAX_FIELDS + 1), XmlError::TooManyFields),
            (
                "<root><a><![CDATA[1]]></a></root>".into(),
                XmlError::WrongRoot {
                    expected: "xml",
                    found: "root".into(),
                },
            ),
            (
                "<xml><a><![CDATA[<!DOCTYPE x>]]></a></xml>".into(),
                XmlError::Doctype,
            ),
            (
                "<xml><a><![CDATA[<!eNtItY x>]]></a></xml>".into(),
                XmlError::Doctype,
            ),
            (
                format!("<xml><a><![CDATA[{}]]></a></xml>", "x".repeat(MAX_BODY)),
                XmlError::TooLarge(MAX_BODY + 30),
            ),
            (
                "<xml><a>&xxe;</a></xml>".into(),
                XmlError::Malformed(String::new()),
            ),
            (
                "<xml><a><![CDATA[1]]></b></xml>".into(),
                XmlError::Malformed(String::new()),
            ),
            (
                "<xml><a><![CDATA[1]]</a></xml>".into(),
                XmlError::Malformed(String::new()),
            ),
            (
                "<xml>x<a><![CDATA[1]]></a></xml>".into(),
                XmlError::Malformed(String::new()),
            ),
            (
                "<xml><![CDATA[1]]><a><![CDATA[1]]></a></xml>".into(),
                XmlError::Malformed(String::new()),
            ),
            (
                "<xml><a><![CDATA[1]]></a></xml><xml></xml>".into(),
                XmlError::Malformed("more than one root element".into()),
            ),
            (
                "<xml><a><![CDATA[1]]></a>".into(),
                XmlError::Malformed(String::new()),
            ),
            (
                "<xml><a><![CDATA[1]]></a></xml>tail".into(),
                XmlError::Malformed(String::new()),
            ),
        ];
        for (body, want) in cases {
            let got = decode(body.as_bytes());
            match (&got, &want) {
                // quick-xml's own wording is not ours to pin
                (Err(XmlError::Malformed(_)), XmlError::Malformed(m)) if m.is_empty() => {}
                _ => assert_eq!(got, Err(want.clone()), "{}", &body[..body.len().min(80)]),
            }
            assert_eq!(got, reference(body.as_bytes(), "xml"));
            if body.len() <= MAX_BODY && !has_declaration(body.as_bytes()) {
                assert!(fast(&body).is_none(), "{}", &body[..body.len().min(80)]);
            }
        }
        // GIVEN exactly the field cap THEN still accepted, by the fast path
        let body = many(MAX_FIELDS);
        assert_eq!(fast(&body).map(|m| m.len()), Some(MAX_FIELDS));
        assert_eq!(decode(body.as_bytes()), reference(body.as_bytes(), "xml"));
        // GIVEN bytes that are not UTF-8 inside CDATA THEN refused before either decoder
        assert_eq!(
            decode(b"<xml><a><![CDATA[\xff]]></a></xml>"),
            Err(XmlError::Malformed("body is not UTF-8".into()))
        );
    }

    /// One field in one of the ways a body may spell it: `tame` ones only in the fast decoder's
    /// shape (names and values may still make it refuse, e.g. duplicates or `&`).
    fn field_strategy(tame: bool) -> impl Strategy<Value = String> {
        let name = prop_oneof![
            6 => proptest::sample::select(vec![
                "a", "b", "ab", "A", "_z", "x_1", "sign", "return_code", "coupon_type_0_0",
                "coupon_type_0_1", "xml", "refund_fee_0", "settlement_refund_fee_10", "settlement_refund_fee_1",
                "settlement_refund_fee_10_long_a", "settlement_refund_fee_10_long_b",
                "settlement_refund_fee_10_long",
            ])
            .prop_map(str::to_string),
            3 => "[a-zA-Z_][a-zA-Z0-9_]{0,12}|settlement_refund_fee_[a-z0-9_]{0,8}",
            1 => proptest::sample::select(vec!["1a", "a:b", "a-b", "a.b", "é"]).prop_map(str::to_string),
        ];
        let atom = proptest::sample::select(vec![
            "",
            "a",
            "0",
            " ",
            "\r\n",
            "\r",
            "\t",
            "<",
            ">",
            "&",
            "]",
            "]]",
            "]]>",
            "[",
            "!",
            "中文",
            "é",
            "&amp;",
            "&lt;",
            "&#60;",
            "&#x4e2d;",
            "&xxe;",
            "<!",
            "<!DOCTYPE x>",
            "<!entity",
            "<!doc",
            "TYPE",
            "<![CDATA[",
            "</",
            "?",
            "\"",
            "'",
            ";",
            "x",
            "yz",
            "123",
        ]);
        let value = proptest::collection::vec(atom, 0..5).prop_map(|v| v.concat());
        let how = if tame { 0u8..=11 } else { 0u8..=20 };
        (name, value, how).prop_map(|(n, v, how)| match how {
            0..=6 => format!("<{n}><![CDATA[{v}]]></{n}>"),
            7..=9 => format!("<{n}>{v}</{n}>"),
            10 => format!("<{n}/>"),
            11 => format!("<{n}></{n}>"),
            12 => format!("<{n} >{v}</{n}>"),
            13 => format!("<{n}>{v}</{n} >"),
            14 => format!("<{n}><![CDATA[{v}]]>{v}</{n}>"),
            15 => format!("<{n}><b>{v}</b></{n}>"),
            16 => format!("<{n}>{v}</m>"),
            17 => format!("<!--{v}-->"),
            18 => format!("<{n} x=\"1\">{v}</{n}>"),
            19 => v,
            _ => format!("<{n}><![CDATA[{v}"),
        })
    }

    fn body_of(open: &str, fields: Vec<(String, &str)>, close: &str) -> String {
        let mut s = open.to_string();
        for (f, sep) in fields {
            s.push_str(&f);
            s.push_str(sep);
        }
        s + close
    }

    /// Bodies of both kinds: about half in the fast decoder's shape, the rest anything.
    fn body_strategy() -> impl Strategy<Value = String> {
        let sep = || proptest::sample::select(vec!["", "", "", " ", "\n", "\r\n\t", "\x0c"]);
        let tame = (
            proptest::sample::select(vec!["<xml>", "<xml>", " \n<xml>"]),
            proptest::collection::vec((field_strategy(true), sep()), 0..8),
            proptest::sample::select(vec!["</xml>", "</xml>", "</xml>\n"]),
        )
            .prop_map(|(o, f, c)| body_of(o, f, c));
        let wild = (
            proptest::sample::select(vec![
                "<xml>",
                "<xml>",
                "<xml>",
                " \n<xml>",
                "<?xml version=\"1.0\"?><xml>",
                "<root>",
                "<xml >",
                "\u{feff}<xml>",
                "<xml/>",
                "",
            ]),
            proptest::collection::vec((field_strategy(false), sep()), 0..8),
            proptest::sample::select(vec![
                "</xml>",
                "</xml>",
                "</xml>",
                "</xml>\n",
                "</xml >",
                "",
                "</xml><xml></xml>",
                "</xml>x",
                "</root>",
                "</xml><!-- c -->",
            ]),
        )
            .prop_map(|(o, f, c)| body_of(o, f, c));
        prop_oneof![tame, wild]
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn fast_and_general_decoders_agree(body in body_strategy()) {
            // WHEN the fast decoder accepts THEN the general one gives the same map
            if let Some(map) = fast(&body) {
                prop_assert_eq!(Ok(map), decode_general(&body, "xml"));
            }
            // AND decode answers exactly as before the fast path, refusals included
            prop_assert_eq!(decode(body.as_bytes()), reference(body.as_bytes(), "xml"));
        }

        #[test]
        fn declaration_check_matches_the_old_one(
            parts in proptest::collection::vec(
                proptest::sample::select(vec!["<", "!", "<!", "DOCTYPE", "doctype", "EntitY", "ENTIT", "x", "中"]),
                0..12,
            )
        ) {
            let body = parts.concat();
            let b = body.as_bytes();
            prop_assert_eq!(
                has_declaration(b),
                contains_ci(b, b"<!DOCTYPE") || contains_ci(b, b"<!ENTITY")
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The map against a `BTreeMap` model: byte order, replacement, removal, copy on write.
        #[test]
        fn map_behaves_like_a_btreemap(
            ops in proptest::collection::vec(
                (any::<bool>(), "[aAb_]{0,3}|coupon_refund_fee_[0-9]{1,2}|settlement_refund_fee_[0-9a]{0,6}|\u{0}|中", "[a-z]{0,150}"),
                0..120,
            )
        ) {
            let mut model: BTreeMap<String, String> = BTreeMap::new();
            let mut map = XmlMap::new();
            let mut snapshot = (map.clone(), model.clone());
            for (i, (put, name, value)) in ops.into_iter().enumerate() {
                if put {
                    prop_assert_eq!(map.insert(name.clone(), value.clone()), model.insert(name, value));
                } else {
                    prop_assert_eq!(map.remove(&name), model.remove(&name));
                    prop_assert_eq!(map.contains(&name), false);
                }
                if i % 17 == 0 {
                    snapshot = (map.clone(), model.clone());
                }
                prop_assert!(map.iter().eq(model.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
                prop_assert_eq!(map.len(), model.len());
            }
            for (k, v) in &model {
                prop_assert_eq!(map.get(k), Some(v.as_str()));
            }
            // a clone taken earlier did not see the later changes
            let (old_map, old_model) = snapshot;
            prop_assert!(old_map.iter().eq(old_model.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
            // collecting gives the same map, later duplicates winning
            let collected: XmlMap = map
                .iter()
                .chain(map.iter().rev())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            prop_assert_eq!(&collected, &map);
            prop_assert_eq!(format!("{map:?}"), format!("XmlMap({model:?})"));
        }
    }

    #[test]
    fn replaced_values_do_not_grow_the_text_for_ever() {
        let mut map = XmlMap::new();
        map.insert("keep", "k");
        for i in 0..10_000 {
            map.insert("n", format!("value {i:>40}"));
        }
        assert_eq!(map.get("n").map(str::len), Some(46));
        assert_eq!(map.get("keep"), Some("k"));
        assert!(map.0.text.len() < 20_000, "{}", map.0.text.len());
        let collected: XmlMap = [("a", "1"), ("b", "2"), ("a", "3")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            collected.iter().collect::<Vec<_>>(),
            [("a", "3"), ("b", "2")]
        );
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
