//! SMS body measurement: GSM-7 or UCS-2 encoding and segment count (3GPP TS 23.038).
//!
//! Hand-written rather than a crate: it is one table and two loops, and the segment rule
//! (an escape pair or a surrogate pair is never split across segments) is what carriers bill.

use serde::{Deserialize, Serialize};

/// The GSM 03.38 basic character set (without ESC, which user text cannot contain).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The extension table: each costs two septets (ESC + char).
const GSM7_EXTENSION: &str = "\u{0C}^{}\\[~]|€";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
pub enum Encoding {
    #[serde(rename = "GSM-7")]
    Gsm7,
    #[serde(rename = "UCS-2")]
    Ucs2,
}

/// What a body costs to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SmsMeasure {
    /// Characters as a person counts them (Unicode scalar values).
    pub characters: usize,
    pub encoding: Encoding,
    pub segments: usize,
}

pub fn measure(body: &str) -> SmsMeasure {
    let characters = body.chars().count();
    let costs: Option<Vec<usize>> = body.chars().map(gsm7_septets).collect();
    match costs {
        Some(costs) => SmsMeasure {
            characters,
            encoding: Encoding::Gsm7,
            segments: segments(&costs, 160, 153),
        },
        None => {
            let costs: Vec<usize> = body.chars().map(char::len_utf16).collect();
            SmsMeasure {
                characters,
                encoding: Encoding::Ucs2,
                segments: segments(&costs, 70, 67),
            }
        }
    }
}

fn gsm7_septets(c: char) -> Option<usize> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Packs indivisible units into segments: one segment holds `single` units, but once a
/// message needs more, each segment holds `multi` (the rest carries the concatenation header).
fn segments(costs: &[usize], single: usize, multi: usize) -> usize {
    let total: usize = costs.iter().sum();
    if total == 0 {
        return 0;
    }
    if total <= single {
        return 1;
    }
    let mut count = 1;
    let mut used = 0;
    for &cost in costs {
        if used + cost > multi {
            count += 1;
            used = 0;
        }
        used += cost;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_text_is_gsm7() {
        let m = measure("Hello {{name}}, your code is 1234.");
        assert_eq!(m.encoding, Encoding::Gsm7);
        assert_eq!(m.segments, 1);
    }

    #[test]
    fn segment_boundaries_gsm7() {
        assert_eq!(measure(&"a".repeat(160)).segments, 1);
        assert_eq!(measure(&"a".repeat(161)).segments, 2);
        assert_eq!(measure(&"a".repeat(306)).segments, 2);
        assert_eq!(measure(&"a".repeat(307)).segments, 3);
        // Extension characters cost two septets: 80 euro signs fill one segment exactly.
        assert_eq!(measure(&"€".repeat(80)).segments, 1);
        assert_eq!(measure(&"€".repeat(81)).segments, 2);
    }

    #[test]
    fn escape_pair_is_never_split() {
        // 152 septets then a 2-septet char: it does not fit in the first 153-septet segment.
        let body = format!("{}€{}", "a".repeat(152), "a".repeat(10));
        assert_eq!(measure(&body).segments, 2);
        let body = format!("{}€{}", "a".repeat(152), "a".repeat(153 - 2 + 1));
        assert_eq!(measure(&body).segments, 3);
    }

    #[test]
    fn unicode_is_ucs2() {
        let m = measure("Привет");
        assert_eq!(
            (m.encoding, m.characters, m.segments),
            (Encoding::Ucs2, 6, 1)
        );
        assert_eq!(measure(&"ж".repeat(70)).segments, 1);
        assert_eq!(measure(&"ж".repeat(71)).segments, 2);
        // An emoji is a surrogate pair: two UTF-16 units, one character.
        let m = measure("😀");
        assert_eq!((m.encoding, m.characters), (Encoding::Ucs2, 1));
        assert_eq!(measure(&"😀".repeat(35)).segments, 1);
        assert_eq!(measure(&"😀".repeat(36)).segments, 2);
    }

    proptest! {
        #[test]
        fn segments_grow_with_length(body in "\\PC{0,400}") {
            let m = measure(&body);
            let longer = measure(&format!("{body}x"));
            prop_assert!(longer.segments >= m.segments);
            prop_assert_eq!(m.segments == 0, body.is_empty());
            let per_segment = if m.encoding == Encoding::Gsm7 { 153 } else { 67 };
            let units: usize = if m.encoding == Encoding::Gsm7 {
                body.chars().map(|c| gsm7_septets(c).unwrap_or(0)).sum()
            } else {
                body.encode_utf16().count()
            };
            prop_assert!(m.segments <= units.div_ceil(per_segment).max(1) + units / per_segment);
        }
    }
}
