//! Money: integer minor units and an ISO 4217 currency, never floats.
//!
//! Stripe takes amounts in the currency's smallest unit: cents for `usd`, whole yen for the
//! zero-decimal `jpy`, and for the three-decimal currencies (`kwd`, …) thousandths that must
//! be a multiple of ten. Currencies go to Stripe lowercase.

use serde::{Deserialize, Serialize};

/// The largest amount Herald accepts: Stripe's limit of eight digits.
pub const MAX_AMOUNT: i64 = 99_999_999;

/// Active ISO 4217 currency codes.
const ISO_4217: &[&str] = &[
    "aed", "afn", "all", "amd", "ang", "aoa", "ars", "aud", "awg", "azn", "bam", "bbd", "bdt",
    "bgn", "bhd", "bif", "bmd", "bnd", "bob", "brl", "bsd", "btn", "bwp", "byn", "bzd", "cad",
    "cdf", "chf", "clp", "cny", "cop", "crc", "cup", "cve", "czk", "djf", "dkk", "dop", "dzd",
    "egp", "ern", "etb", "eur", "fjd", "fkp", "gbp", "gel", "ghs", "gip", "gmd", "gnf", "gtq",
    "gyd", "hkd", "hnl", "htg", "huf", "idr", "ils", "inr", "iqd", "irr", "isk", "jmd", "jod",
    "jpy", "kes", "kgs", "khr", "kmf", "kpw", "krw", "kwd", "kyd", "kzt", "lak", "lbp", "lkr",
    "lrd", "lsl", "lyd", "mad", "mdl", "mga", "mkd", "mmk", "mnt", "mop", "mru", "mur", "mvr",
    "mwk", "mxn", "myr", "mzn", "nad", "ngn", "nio", "nok", "npr", "nzd", "omr", "pab", "pen",
    "pgk", "php", "pkr", "pln", "pyg", "qar", "ron", "rsd", "rub", "rwf", "sar", "sbd", "scr",
    "sdg", "sek", "sgd", "shp", "sle", "sos", "srd", "ssp", "stn", "svc", "syp", "szl", "thb",
    "tjs", "tmt", "tnd", "top", "try", "ttd", "twd", "tzs", "uah", "ugx", "usd", "uyu", "uzs",
    "ves", "vnd", "vuv", "wst", "xaf", "xcd", "xof", "xpf", "yer", "zar", "zmw", "zwl",
];

/// Stripe's zero-decimal currencies: the amount is in whole units.
const ZERO_DECIMAL: &[&str] = &[
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
];

/// Three-decimal currencies: Stripe wants the last digit 0.
const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];

/// Stripe's minimum charge per currency in minor units ("Minimum and maximum charge
/// amounts", docs.stripe.com/currencies#minimum-and-maximum-charge-amounts: 0.50 USD, 0.30
/// GBP, 50 JPY, …). Stripe refuses less with `amount_too_small`; Herald refuses it first,
/// naming the field. Currencies not listed there are held to their smallest unit (Stripe
/// checks them against 0.50 USD at the day's rate, which Herald cannot know).
const MINIMUM_CHARGE: &[(&str, i64)] = &[
    ("aed", 200),
    ("aud", 50),
    ("bgn", 100),
    ("brl", 50),
    ("cad", 50),
    ("chf", 50),
    ("czk", 1500),
    ("dkk", 250),
    ("eur", 50),
    ("gbp", 30),
    ("hkd", 400),
    ("huf", 17_500),
    ("inr", 50),
    ("jpy", 50),
    ("mxn", 1000),
    ("myr", 200),
    ("nok", 300),
    ("nzd", 50),
    ("pln", 200),
    ("ron", 200),
    ("sek", 300),
    ("sgd", 50),
    ("thb", 1000),
    ("usd", 50),
];

/// A validated ISO 4217 code, lowercase as Stripe takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    /// # Errors
    /// When the code is not an active ISO 4217 currency.
    pub fn parse(code: &str) -> Result<Self, String> {
        let lower = code.trim().to_ascii_lowercase();
        if ISO_4217.binary_search(&lower.as_str()).is_ok() {
            Ok(Self(lower))
        } else {
            Err("must be an ISO 4217 currency code such as usd or eur".to_owned())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Digits after the decimal point in the currency's minor unit.
    pub fn exponent(&self) -> u32 {
        if ZERO_DECIMAL.contains(&self.0.as_str()) {
            0
        } else if THREE_DECIMAL.contains(&self.0.as_str()) {
            3
        } else {
            2
        }
    }

    /// The smallest amount Stripe charges in this currency, in minor units.
    pub fn minimum_charge(&self) -> i64 {
        MINIMUM_CHARGE
            .iter()
            .find(|(code, _)| *code == self.0)
            .map_or(1, |(_, minimum)| *minimum)
    }

    pub fn is_zero_decimal(&self) -> bool {
        self.exponent() == 0
    }

    /// `12.34 USD` from 1234.
    pub fn format(&self, amount: i64) -> String {
        let exponent = self.exponent();
        let code = self.0.to_ascii_uppercase();
        if exponent == 0 {
            return format!("{amount} {code}");
        }
        let scale = 10_i64.pow(exponent);
        let sign = if amount < 0 { "-" } else { "" };
        let amount = amount.unsigned_abs();
        let scale = scale.unsigned_abs();
        format!(
            "{sign}{}.{:0width$} {code}",
            amount / scale,
            amount % scale,
            width = exponent as usize
        )
    }
}

impl TryFrom<String> for Currency {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.0
    }
}

/// Checks an amount in minor units of `currency`.
///
/// # Errors
/// A message for the `amount` field.
pub fn check_amount(amount: i64, currency: &Currency) -> Result<(), String> {
    if !(1..=MAX_AMOUNT).contains(&amount) {
        return Err(format!(
            "must be a whole number of minor units from 1 to {MAX_AMOUNT}"
        ));
    }
    if amount < currency.minimum_charge() {
        return Err(format!(
            "must be at least {} (Stripe's minimum charge in {})",
            currency.format(currency.minimum_charge()),
            currency.as_str()
        ));
    }
    if currency.exponent() == 3 && amount % 10 != 0 {
        return Err(format!(
            "{} amounts must be a multiple of 10 (Stripe charges three-decimal currencies in tens)",
            currency.as_str()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_currency_list_is_sorted_for_binary_search() {
        assert!(ISO_4217.windows(2).all(|w| w[0] < w[1]));
        for code in ZERO_DECIMAL.iter().chain(THREE_DECIMAL) {
            assert!(Currency::parse(code).is_ok(), "{code}");
        }
    }

    #[test]
    fn currencies_are_validated_and_lowercased() {
        assert_eq!(Currency::parse("USD").unwrap().as_str(), "usd");
        assert_eq!(Currency::parse("eur").unwrap().as_str(), "eur");
        for bad in ["", "us", "usdd", "xyz", "dollars", "u$d"] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn amounts_are_positive_bounded_minor_units() {
        let usd = Currency::parse("usd").unwrap();
        assert!(check_amount(50, &usd).is_ok());
        assert!(check_amount(MAX_AMOUNT, &usd).is_ok());
        for bad in [0, -5, 1, 49, MAX_AMOUNT + 1, i64::MAX] {
            assert!(check_amount(bad, &usd).is_err(), "{bad}");
        }
        let kwd = Currency::parse("kwd").unwrap();
        assert!(check_amount(1005, &kwd).is_err());
        assert!(check_amount(1010, &kwd).is_ok());
        let jpy = Currency::parse("jpy").unwrap();
        assert!(check_amount(49, &jpy).is_err(), "50 yen at least");
        assert!(check_amount(50, &jpy).is_ok());
        assert!(check_amount(29, &Currency::parse("gbp").unwrap()).is_err());
        assert!(
            MINIMUM_CHARGE
                .iter()
                .all(|(code, _)| Currency::parse(code).is_ok())
        );
    }

    #[test]
    fn formats_by_the_currency_exponent() {
        assert_eq!(Currency::parse("usd").unwrap().format(1234), "12.34 USD");
        assert_eq!(Currency::parse("usd").unwrap().format(5), "0.05 USD");
        assert_eq!(Currency::parse("jpy").unwrap().format(500), "500 JPY");
        assert!(Currency::parse("jpy").unwrap().is_zero_decimal());
        assert_eq!(Currency::parse("kwd").unwrap().format(1250), "1.250 KWD");
    }
}
