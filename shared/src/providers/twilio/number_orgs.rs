//! `TWILIO_NUMBER_ORGS`: the sender numbers that belong to one organization each. A reply to
//! such a number is that organization's (the Twilio webhook); a send from one needs no reply
//! route of its own (the SMS worker).

use std::collections::HashMap;

use crate::domain::OrgId;
use crate::domain::sms_message::PhoneNumber;

/// Parses `TWILIO_NUMBER_ORGS` (`+15550100=acme,+15550101=globex`).
///
/// # Errors
/// When an entry is not `number=org` with a valid number and organization.
pub fn parse_number_orgs(value: &str) -> anyhow::Result<HashMap<String, OrgId>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (number, org) = entry.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("TWILIO_NUMBER_ORGS entry {entry} is not number=org")
            })?;
            let number = PhoneNumber::parse(number).map_err(|m| anyhow::anyhow!("{number} {m}"))?;
            let org = OrgId::parse(org.trim()).map_err(|m| anyhow::anyhow!("{org}: {m}"))?;
            Ok((number.to_string(), org))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn number_map() {
        let map = parse_number_orgs("+1 415 555 2671=acme, +442079460958=globex").unwrap();
        assert_eq!(map["+14155552671"].as_str(), "acme");
        assert_eq!(map["+442079460958"].as_str(), "globex");
        assert!(parse_number_orgs("").unwrap().is_empty());
        assert!(parse_number_orgs("+14155552671").is_err());
        assert!(parse_number_orgs("12=acme").is_err());
    }
}
