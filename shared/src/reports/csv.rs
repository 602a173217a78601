//! CSV per RFC 4180: UTF-8 (no byte-order mark), CRLF line ends, a header row, fields
//! quoted when they hold a comma, a quote, CR or LF (quotes doubled).
//!
//! Formula injection: a spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` (and
//! some also after a leading tab or CR) as a formula. Text cells starting with any of those
//! six characters get a leading `'`, which spreadsheets show as text and never evaluate.
//! Number cells Herald computes itself are written as they are (so `-3` stays a number).

use super::Cell;

const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// The text of a cell with the formula guard applied.
pub fn escape_formula(text: &str) -> std::borrow::Cow<'_, str> {
    if text.starts_with(FORMULA_STARTS) {
        std::borrow::Cow::Owned(format!("'{text}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

fn push_field(out: &mut Vec<u8>, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        out.push(b'"');
        out.extend_from_slice(field.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(field.as_bytes());
    }
}

/// Appends the header row.
pub fn write_header(out: &mut Vec<u8>, columns: &[String]) {
    for (index, column) in columns.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        push_field(out, &escape_formula(column));
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one row.
pub fn write_row(out: &mut Vec<u8>, row: &[Cell]) {
    for (index, cell) in row.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        match cell {
            Cell::Text(text) => push_field(out, &escape_formula(text)),
            Cell::Int(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Cell::Percent(ratio) => {
                out.extend_from_slice(format!("{:.4}", ratio).as_bytes());
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(row: &[Cell]) -> String {
        let mut out = Vec::new();
        write_row(&mut out, row);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn formula_cells_are_escaped_and_numbers_are_not() {
        for dangerous in ["=HYPERLINK(\"x\")", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(escape_formula(dangerous), format!("'{dangerous}"));
        }
        assert_eq!(escape_formula("launch"), "launch");
        assert_eq!(escape_formula("a=b"), "a=b");
        assert_eq!(line(&[Cell::Int(-3), Cell::text("-3")]), "-3,'-3\r\n");
    }

    #[test]
    fn fields_are_quoted_per_rfc_4180() {
        assert_eq!(
            line(&[
                Cell::text("a,b"),
                Cell::text("say \"hi\""),
                Cell::text("two\nlines"),
                Cell::text("Привет"),
                Cell::Percent(0.5),
            ]),
            "\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",Привет,0.5000\r\n"
        );
        let mut header = Vec::new();
        write_header(&mut header, &["campaign".into(), "sent".into()]);
        assert_eq!(header, b"campaign,sent\r\n");
        // A quoted dangerous cell keeps its guard inside the quotes.
        assert_eq!(line(&[Cell::text("=1,2")]), "\"'=1,2\"\r\n");
    }
}
