//! TXT data in presentation format (RFC 1035 §5.1): one or more quoted character-strings of
//! at most 255 bytes each, with `\"`, `\\`, `\X` and `\DDD` escapes; and the 255-byte split
//! itself, for providers that write character-strings on the wire.
//!
//! [`RData::Txt`](crate::RData) holds the logical (joined) text; these functions are how a
//! provider writes it to, and reads it from, an API that speaks presentation format.

/// The most bytes in one TXT character-string (RFC 1035 §3.3).
pub const MAX_STRING: usize = 255;

/// How the three-digit escape reads, and what is escaped when writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escapes {
    /// RFC 1035: `\DDD` is a decimal byte value. Written text escapes only `"` and `\`;
    /// anything else (UTF-8 included) is written as it is, and character-strings are never
    /// split inside a character.
    Decimal,
    /// `\OOO` is an octal byte value (Route 53's TXT escape). Written text is ASCII only:
    /// every byte outside printable ASCII is written `\OOO`.
    Octal,
}

impl Escapes {
    fn radix(self) -> u32 {
        match self {
            Escapes::Decimal => 10,
            Escapes::Octal => 8,
        }
    }
}

/// Why presentation text could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxtError {
    #[error("unterminated quoted string")]
    Unterminated,
    #[error("dangling backslash")]
    DanglingBackslash,
    #[error("an escape beyond 255")]
    EscapeOutOfRange,
    #[error("text between quoted strings must be quoted")]
    OutsideQuotes,
    #[error("not UTF-8 once unescaped")]
    NotUtf8,
}

/// `text` in 255-byte pieces, at least one (an empty text is one empty string). Pieces may
/// split a UTF-8 character: a character-string is bytes.
pub fn character_strings(text: &str) -> Vec<&[u8]> {
    if text.is_empty() {
        return vec![&[][..]];
    }
    text.as_bytes().chunks(MAX_STRING).collect()
}

/// `text` in pieces of at most 255 bytes, at least one, never splitting a character.
fn utf8_strings(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if i + c.len_utf8() - start > MAX_STRING {
            pieces.push(&text[start..i]);
            start = i;
        }
    }
    if start < text.len() || pieces.is_empty() {
        pieces.push(&text[start..]);
    }
    pieces
}

/// One quoted character-string, whatever its length, with only `"` and `\` escaped: how
/// mxguard itself writes a TXT record (RFC 1035, [`Escapes::Decimal`]).
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// One quoted character-string in ASCII: `"` and `\` escaped, every byte outside printable
/// ASCII as `\OOO` ([`Escapes::Octal`]).
fn quote_octal(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            b' '..=b'~' => out.push(char::from(b)),
            _ => out.push_str(&format!("\\{b:03o}")),
        }
    }
    out.push('"');
    out
}

/// TXT text → `"…" "…"`: quoted character-strings of at most 255 bytes of `text` each (see
/// [`Escapes`] for what is escaped and where a long text is split).
pub fn encode_presentation(text: &str, escapes: Escapes) -> String {
    let quoted: Vec<String> = match escapes {
        Escapes::Decimal => utf8_strings(text).into_iter().map(quote).collect(),
        Escapes::Octal => character_strings(text)
            .into_iter()
            .map(quote_octal)
            .collect(),
    };
    quoted.join(" ")
}

/// Presentation text → TXT text. Quoted strings are unescaped and joined, with any
/// whitespace between them; text that does not start with `"` is taken as it is (trimmed),
/// as consoles and dashboards store it.
pub fn decode_presentation(input: &str, escapes: Escapes) -> Result<String, TxtError> {
    let s = input.trim();
    if !s.starts_with('"') {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'"' {
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return Err(TxtError::Unterminated),
                    Some(b'"') => break,
                    Some(b'\\') => i += unescape_at(bytes, i, escapes, &mut out)?,
                    Some(&b) => {
                        out.push(b);
                        i += 1;
                    }
                }
            }
            i += 1;
        } else {
            match s[i..].chars().next() {
                Some(c) if c.is_whitespace() => i += c.len_utf8(),
                _ => return Err(TxtError::OutsideQuotes),
            }
        }
    }
    String::from_utf8(out).map_err(|_| TxtError::NotUtf8)
}

/// Unquoted presentation text with its backslash escapes undone (`\X` → `X`, three digits →
/// that byte): a name as some APIs return it, e.g. `\052.example.com.`.
pub fn unescape(input: &str, escapes: Escapes) -> Result<String, TxtError> {
    String::from_utf8(unescape_bytes(input.as_bytes(), escapes)?).map_err(|_| TxtError::NotUtf8)
}

fn unescape_bytes(bytes: &[u8], escapes: Escapes) -> Result<Vec<u8>, TxtError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'\\' {
            i += unescape_at(bytes, i, escapes, &mut out)?;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

/// Reads the escape starting with the backslash at `bytes[i]` into `out`; returns how many
/// bytes it took.
fn unescape_at(
    bytes: &[u8],
    i: usize,
    escapes: Escapes,
    out: &mut Vec<u8>,
) -> Result<usize, TxtError> {
    let radix = escapes.radix();
    let digits = bytes
        .get(i + 1..i + 4)
        .filter(|d| d.iter().all(|&b| char::from(b).is_digit(radix)));
    if let Some(d) = digits {
        let value = d
            .iter()
            .fold(0u32, |acc, &b| acc * radix + u32::from(b - b'0'));
        out.push(u8::try_from(value).map_err(|_| TxtError::EscapeOutOfRange)?);
        return Ok(4);
    }
    let next = bytes.get(i + 1).ok_or(TxtError::DanglingBackslash)?;
    out.push(*next);
    Ok(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Escapes::{Decimal, Octal};

    /// The unescaped length of each quoted string.
    fn lens(encoded: &str, escapes: Escapes) -> Vec<usize> {
        encoded
            .split("\" \"")
            .map(|piece| {
                let piece = piece.trim_matches('"');
                unescape_bytes(piece.as_bytes(), escapes).unwrap().len()
            })
            .collect()
    }

    #[test]
    fn decimal_and_octal_escapes_read_three_digits() {
        assert_eq!(decode_presentation(r#""a\059b""#, Decimal).unwrap(), "a;b");
        assert_eq!(decode_presentation(r#""a\073b""#, Octal).unwrap(), "a;b");
        assert_eq!(
            decode_presentation(r#""\195\169t\195\169""#, Decimal).unwrap(),
            "été"
        );
        assert_eq!(decode_presentation(r#""\303\251""#, Octal).unwrap(), "é");
        // fewer than three digits (or not digits of the radix): the next character, as is
        assert_eq!(decode_presentation(r#""\05""#, Decimal).unwrap(), "05");
        assert_eq!(decode_presentation(r#""\089""#, Octal).unwrap(), "089");
        assert_eq!(
            decode_presentation(r#""\256""#, Decimal),
            Err(TxtError::EscapeOutOfRange)
        );
        assert_eq!(
            decode_presentation(r#""\377""#, Octal),
            Err(TxtError::NotUtf8)
        );
        assert_eq!(
            decode_presentation(r#""x\"#, Decimal),
            Err(TxtError::DanglingBackslash)
        );
        assert_eq!(
            decode_presentation(r#""x\""#, Decimal),
            Err(TxtError::Unterminated)
        );
        assert_eq!(unescape("x\\", Octal), Err(TxtError::DanglingBackslash));
        assert_eq!(unescape("\\052.a\\.b", Octal).unwrap(), "*.a.b");
    }

    #[test]
    fn strings_join_across_any_whitespace_and_bare_text_is_kept() {
        assert_eq!(
            decode_presentation("\"a\" \t\"b\"\n\"c\"", Decimal).unwrap(),
            "abc"
        );
        assert_eq!(
            decode_presentation("  bare words ", Decimal).unwrap(),
            "bare words"
        );
        assert_eq!(
            decode_presentation(r#""a" b"#, Octal),
            Err(TxtError::OutsideQuotes)
        );
    }

    #[test]
    fn long_text_is_split_into_255_byte_strings() {
        let ascii = "x".repeat(600);
        assert_eq!(
            lens(&encode_presentation(&ascii, Decimal), Decimal),
            [255, 255, 90]
        );
        assert_eq!(
            lens(&encode_presentation(&ascii, Octal), Octal),
            [255, 255, 90]
        );
        let pieces: Vec<usize> = character_strings(&ascii).iter().map(|p| p.len()).collect();
        assert_eq!(pieces, [255, 255, 90]);
        assert_eq!(character_strings(""), [b"".as_slice()]);
        assert_eq!(encode_presentation("", Decimal), "\"\"");
        assert_eq!(encode_presentation("", Octal), "\"\"");

        // two-byte characters: decimal never splits one (254 + 146 bytes); octal splits bytes
        let accents = "é".repeat(200);
        assert_eq!(
            lens(&encode_presentation(&accents, Decimal), Decimal),
            [254, 146]
        );
        let octal = encode_presentation(&accents, Octal);
        assert!(octal.is_ascii());
        assert_eq!(lens(&octal, Octal), [255, 145]);
    }

    #[test]
    fn encoding_round_trips_and_escapes_what_it_must() {
        let spf = format!("v=spf1 {}-all", "include:_spf.example.net ".repeat(12));
        let accents = "é".repeat(200);
        let samples = [
            spf.as_str(),
            "",
            r#"say "hi" \ bye"#,
            "é ✓ and \\123 that is no escape",
            &accents,
        ];
        for (text, escapes) in samples.iter().flat_map(|t| [(*t, Decimal), (*t, Octal)]) {
            let encoded = encode_presentation(text, escapes);
            let decoded = decode_presentation(&encoded, escapes);
            assert_eq!(decoded.as_deref(), Ok(text), "{escapes:?}: {encoded}");
        }
        assert_eq!(quote(r#"a "b" \c é"#), r#""a \"b\" \\c é""#);
        assert_eq!(encode_presentation("é\n\"", Octal), r#""\303\251\012\"""#);
    }
}
