//! `X-Twilio-Signature`: base64(HMAC-SHA1(auth token, URL + each form parameter's name and
//! value, sorted by name)). The URL is the one configured as the webhook's public address,
//! never rebuilt from request headers, which a caller controls.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;

pub const SIGNATURE_HEADER: &str = "x-twilio-signature";

fn mac(auth_token: &str, url: &str, params: &[(String, String)]) -> Hmac<Sha1> {
    // Any key length is accepted by HMAC; `new_from_slice` cannot fail for SHA-1.
    let mut mac = match Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    // Sorted by name; a repeated name keeps its values in order (stable sort), as Twilio does.
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// The signature Twilio sends for a POST of `params` to `url`.
pub fn sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    STANDARD.encode(mac(auth_token, url, params).finalize().into_bytes())
}

/// Whether `signature` is Twilio's for this request; the comparison is constant-time.
pub fn verify(auth_token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    let Ok(given) = STANDARD.decode(signature.trim()) else {
        return false;
    };
    mac(auth_token, url, params).verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_params() -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    const EXAMPLE_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    #[test]
    fn twilios_published_example() {
        // Twilio's security documentation: token 12345, this URL and these parameters.
        let signature = sign("12345", EXAMPLE_URL, &example_params());
        assert_eq!(signature, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        assert!(verify("12345", EXAMPLE_URL, &example_params(), &signature));
    }

    #[test]
    fn parameter_order_does_not_matter() {
        let mut reversed = example_params();
        reversed.reverse();
        assert!(verify(
            "12345",
            EXAMPLE_URL,
            &reversed,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
    }

    #[test]
    fn a_tampered_parameter_a_different_url_or_token_fails() {
        let mut tampered = example_params();
        tampered[2].1 = "9999".to_owned();
        let good = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";
        assert!(!verify("12345", EXAMPLE_URL, &tampered, good));
        assert!(!verify(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &example_params(),
            good
        ));
        assert!(!verify("54321", EXAMPLE_URL, &example_params(), good));
        assert!(!verify("12345", EXAMPLE_URL, &example_params(), ""));
        assert!(!verify(
            "12345",
            EXAMPLE_URL,
            &example_params(),
            "not base64!"
        ));
    }
}
