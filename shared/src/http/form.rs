//! Form bodies that are not JSON: `multipart/form-data` text fields (RFC 7578) — what RFC
//! 8058 allows for a one-click unsubscribe POST and what SendGrid's Inbound Parse posts —
//! and escaping for the few HTML and XML answers Herald writes (the unsubscribe page,
//! TwiML).

use std::collections::BTreeMap;

/// The text fields of a `multipart/form-data` body, by name (a repeated name keeps its
/// first value). Parts with a `filename` (attachments) are skipped. `None` when the
/// content type names no boundary or the body is not multipart.
pub fn multipart_fields(content_type: &str, body: &[u8]) -> Option<BTreeMap<String, String>> {
    let boundary = parameter(content_type, "boundary")?;
    let delimiter = format!("--{boundary}");
    find(body, delimiter.as_bytes())?;
    let mut parts = split(body, delimiter.as_bytes());
    parts.next()?; // the preamble, before the first delimiter
    let mut fields = BTreeMap::new();
    for part in parts {
        if part.starts_with(b"--") {
            break; // the close delimiter
        }
        let part = part
            .strip_prefix(b"\r\n")
            .or_else(|| part.strip_prefix(b"\n"))?;
        let (headers, value) =
            split_once(part, b"\r\n\r\n").or_else(|| split_once(part, b"\n\n"))?;
        let value = value
            .strip_suffix(b"\r\n")
            .or_else(|| value.strip_suffix(b"\n"))
            .unwrap_or(value);
        let headers = String::from_utf8_lossy(headers);
        let Some(disposition) = headers.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-disposition")
                .then_some(value)
        }) else {
            continue;
        };
        if parameter(disposition, "filename").is_some() {
            continue;
        }
        if let Some(name) = parameter(disposition, "name") {
            fields
                .entry(name)
                .or_insert_with(|| String::from_utf8_lossy(value).into_owned());
        }
    }
    Some(fields)
}

/// A `; key=value` parameter of a header value, unquoted.
fn parameter(header: &str, key: &str) -> Option<String> {
    header.split(';').skip(1).find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim().eq_ignore_ascii_case(key).then(|| {
            let value = value.trim();
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
                .to_owned()
        })
    })
}

fn split<'a>(body: &'a [u8], delimiter: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = Some(body);
    std::iter::from_fn(move || {
        let current = rest?;
        match find(current, delimiter) {
            Some(at) => {
                rest = Some(&current[at + delimiter.len()..]);
                // The CRLF before a delimiter belongs to the delimiter (RFC 2046 §5.1.1).
                let piece = &current[..at];
                Some(piece.strip_suffix(b"\r\n").unwrap_or(piece))
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

fn split_once<'a>(bytes: &'a [u8], separator: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    let at = find(bytes, separator)?;
    Some((&bytes[..at], &bytes[at + separator.len()..]))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Text made safe inside HTML or XML content and attribute values.
pub fn escape_markup(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields_are_read_and_files_skipped() {
        let body = "preamble\r\n--xYzZY\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\nunsubscribe@parse.example.com\r\n\
                    --xYzZY\r\ncontent-disposition: form-data; name=\"subject\"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nunsubscribe v1.a.b.c\r\n\
                    --xYzZY\r\nContent-Disposition: form-data; name=\"attachment1\"; filename=\"x.txt\"\r\n\r\nfile\r\n\
                    --xYzZY\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nline one\r\nline two\r\n--xYzZY--\r\n";
        let fields =
            multipart_fields("multipart/form-data; boundary=xYzZY", body.as_bytes()).unwrap();
        assert_eq!(fields["to"], "unsubscribe@parse.example.com");
        assert_eq!(fields["subject"], "unsubscribe v1.a.b.c");
        assert_eq!(fields["text"], "line one\r\nline two");
        assert!(!fields.contains_key("attachment1"));
    }

    #[test]
    fn a_quoted_boundary_and_a_missing_one() {
        let body = b"--b c\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--b c--";
        let fields = multipart_fields("multipart/form-data; boundary=\"b c\"", body).unwrap();
        assert_eq!(fields["List-Unsubscribe"], "One-Click");
        assert_eq!(multipart_fields("multipart/form-data", body), None);
        assert_eq!(
            multipart_fields("multipart/form-data; boundary=zz", b"no parts"),
            None
        );
    }

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            escape_markup("<b>\"x\"&'"),
            "&lt;b&gt;&quot;x&quot;&amp;&#39;"
        );
    }
}
