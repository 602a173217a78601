//! PDF documents Herald renders (reports, payment receipts).
//!
//! Text is drawn with an embedded Unicode font so data in any script renders instead of
//! silently vanishing; DejaVu Sans covers Latin, Greek, Cyrillic, Arabic, Hebrew and more.

/// DejaVu Sans (free license: `assets/fonts/DejaVuSans-LICENSE.txt`).
pub const UNICODE_FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
