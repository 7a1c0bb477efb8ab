//! Renders an X.509 Subject exactly as gRPC's C-core does when it matches a
//! principal against it: OpenSSL's `X509_NAME_print_ex(.., XN_FLAG_RFC2253)`.
//!
//! A policy written for a gRPC C++ server names subjects in this form, so the
//! same policy only means the same thing here if the rendering is identical,
//! byte for byte:
//!
//! * attributes in reverse certificate order, separated by `,` with no
//!   spaces; the members of a multi-valued RDN are joined with `+`;
//! * OpenSSL's short names (`CN`, `OU`, `O`, ...); an attribute type OpenSSL
//!   has no name for is printed as its dotted OID with the value hex-dumped;
//! * every string type converted to UTF-8, then RFC 2253 escaping
//!   (`\,` `\+` `\"` `\\` `\<` `\>` `\;`, a leading `#` or space, a trailing
//!   space) and every control byte and every byte above 0x7F as `\XX`;
//! * a value that is not a string type printed as `#` and the hex of its
//!   whole DER encoding.

use std::fmt::Write;

use x509_parser::der_parser::asn1_rs::{Any, Class, Tag};
use x509_parser::x509::X509Name;

/// OpenSSL's short names for the attribute types a certificate subject
/// usually carries. Anything else is dumped (see module docs).
const SHORT_NAMES: &[(&str, &str)] = &[
    ("2.5.4.3", "CN"),
    ("2.5.4.4", "SN"),
    ("2.5.4.5", "serialNumber"),
    ("2.5.4.6", "C"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.9", "street"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.12", "title"),
    ("2.5.4.13", "description"),
    ("2.5.4.15", "businessCategory"),
    ("2.5.4.17", "postalCode"),
    ("2.5.4.41", "name"),
    ("2.5.4.42", "GN"),
    ("2.5.4.43", "initials"),
    ("2.5.4.44", "generationQualifier"),
    ("2.5.4.46", "dnQualifier"),
    ("2.5.4.65", "pseudonym"),
    ("2.5.4.97", "organizationIdentifier"),
    ("1.2.840.113549.1.9.1", "emailAddress"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("1.3.6.1.4.1.311.60.2.1.1", "jurisdictionL"),
    ("1.3.6.1.4.1.311.60.2.1.2", "jurisdictionST"),
    ("1.3.6.1.4.1.311.60.2.1.3", "jurisdictionC"),
];

/// Renders `name` in OpenSSL's RFC 2253 form. An empty name renders as the
/// empty string.
pub fn render(name: &X509Name<'_>) -> String {
    // Flatten to (rdn index, attribute) so that the reversal below also
    // reverses the members of a multi-valued RDN, as OpenSSL does.
    let attrs: Vec<(usize, _)> = name
        .iter()
        .enumerate()
        .flat_map(|(i, rdn)| rdn.iter().map(move |a| (i, a)))
        .collect();
    let mut out = String::new();
    let mut previous_rdn = None;
    for (rdn, attr) in attrs.iter().rev() {
        if let Some(prev) = previous_rdn {
            out.push(if prev == *rdn { '+' } else { ',' });
        }
        previous_rdn = Some(*rdn);
        let oid = attr.attr_type().to_id_string();
        match SHORT_NAMES.iter().find(|(o, _)| *o == oid) {
            Some((_, short)) => {
                out.push_str(short);
                out.push('=');
                match as_utf8(attr.attr_value()) {
                    Some(text) => escape_into(&mut out, text.as_bytes()),
                    None => hex_dump_into(&mut out, attr.attr_value()),
                }
            }
            None => {
                out.push_str(&oid);
                out.push('=');
                hex_dump_into(&mut out, attr.attr_value());
            }
        }
    }
    out
}

/// Converts an ASN.1 string value to UTF-8 the way OpenSSL's
/// `ASN1_STRFLGS_UTF8_CONVERT` does. `None` for non-string types.
fn as_utf8(value: &Any<'_>) -> Option<String> {
    if value.header.class() != Class::Universal {
        return None;
    }
    let data = value.data;
    match value.header.tag() {
        Tag::Utf8String => Some(String::from_utf8_lossy(data).into_owned()),
        // Single-byte types: OpenSSL takes each byte as a code point, which
        // for T61String means treating it as Latin-1.
        Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString
        | Tag::T61String => Some(data.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString => {
            let units: Vec<u16> = data
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                .collect();
            Some(String::from_utf16_lossy(&units))
        }
        Tag::UniversalString => Some(
            data.chunks(4)
                .map(|c| {
                    let mut b = [0u8; 4];
                    b[..c.len()].copy_from_slice(c);
                    char::from_u32(u32::from_be_bytes(b)).unwrap_or(char::REPLACEMENT_CHARACTER)
                })
                .collect(),
        ),
        _ => None,
    }
}

fn escape_into(out: &mut String, bytes: &[u8]) {
    let last = bytes.len().saturating_sub(1);
    for (i, &b) in bytes.iter().enumerate() {
        let edge_special = (i == 0 && (b == b'#' || b == b' ')) || (i == last && b == b' ');
        if edge_special || b",+\"\\<>;".contains(&b) {
            out.push('\\');
            out.push(char::from(b));
        } else if !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
}

/// `#` followed by the hex of the value's full DER encoding (tag, length,
/// content), upper case, as OpenSSL's `ASN1_STRFLGS_DUMP_DER` prints it.
fn hex_dump_into(out: &mut String, value: &Any<'_>) {
    let header = &value.header;
    let class_bits: u8 = match header.class() {
        Class::Universal => 0x00,
        Class::Application => 0x40,
        Class::ContextSpecific => 0x80,
        Class::Private => 0xC0,
    };
    let constructed = if header.is_constructed() { 0x20 } else { 0 };
    let mut der = Vec::with_capacity(value.data.len() + 8);
    let tag = header.tag().0;
    if tag < 31 {
        der.push(class_bits | constructed | tag as u8);
    } else {
        der.push(class_bits | constructed | 0x1f);
        let mut groups = Vec::new();
        let mut t = tag;
        loop {
            groups.push((t & 0x7f) as u8);
            t >>= 7;
            if t == 0 {
                break;
            }
        }
        for (i, g) in groups.iter().rev().enumerate() {
            der.push(if i + 1 < groups.len() { g | 0x80 } else { *g });
        }
    }
    let len = value.data.len();
    if len < 0x80 {
        der.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        der.push(0x80 | (bytes.len() - skip) as u8);
        der.extend_from_slice(&bytes[skip..]);
    }
    der.extend_from_slice(value.data);
    out.push('#');
    for b in der {
        let _ = write!(out, "{b:02X}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer;

    // A tiny DER writer, enough to build Names that rcgen cannot (multi-valued
    // RDNs, exotic string types, unknown OIDs).
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        assert!(content.len() < 0x80);
        let mut v = vec![tag, content.len() as u8];
        v.extend_from_slice(content);
        v
    }
    fn oid(bytes: &[u8]) -> Vec<u8> {
        tlv(0x06, bytes)
    }
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0a];
    const OU: &[u8] = &[0x55, 0x04, 0x0b];
    fn atv(oid_bytes: &[u8], value: Vec<u8>) -> Vec<u8> {
        let mut c = oid(oid_bytes);
        c.extend(value);
        tlv(0x30, &c)
    }
    fn rdn(atvs: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x31, &atvs.concat())
    }
    fn name(rdns: &[Vec<u8>]) -> String {
        let der = tlv(0x30, &rdns.concat());
        let (_, n) = X509Name::from_der(&der).unwrap();
        render(&n)
    }
    fn utf8(s: &str) -> Vec<u8> {
        tlv(0x0c, s.as_bytes())
    }

    #[test]
    fn reverses_order_and_uses_short_names() {
        let s = name(&[
            rdn(&[atv(O, utf8("Example Corp"))]),
            rdn(&[atv(OU, utf8("analytics"))]),
            rdn(&[atv(CN, utf8("reporting"))]),
        ]);
        assert_eq!(s, "CN=reporting,OU=analytics,O=Example Corp");
    }

    #[test]
    fn empty_subject_is_empty_string() {
        assert_eq!(name(&[]), "");
    }

    #[test]
    fn multi_valued_rdn_joined_with_plus_in_reverse() {
        let s = name(&[
            rdn(&[atv(O, utf8("Org"))]),
            rdn(&[atv(CN, utf8("a")), atv(OU, utf8("b"))]),
        ]);
        assert_eq!(s, "OU=b+CN=a,O=Org");
    }

    #[test]
    fn rfc2253_special_characters_are_escaped() {
        let s = name(&[rdn(&[atv(CN, utf8(r#"a,b+c;d<e>f"g\h=i"#))])]);
        assert_eq!(s, r#"CN=a\,b\+c\;d\<e\>f\"g\\h=i"#);
        assert_eq!(name(&[rdn(&[atv(CN, utf8("#lead"))])]), r"CN=\#lead");
        assert_eq!(name(&[rdn(&[atv(CN, utf8("mid#dle"))])]), "CN=mid#dle");
        assert_eq!(name(&[rdn(&[atv(CN, utf8(" both "))])]), r"CN=\ both\ ");
        assert_eq!(name(&[rdn(&[atv(CN, utf8("in side"))])]), "CN=in side");
    }

    #[test]
    fn non_ascii_and_control_bytes_are_hex_escaped() {
        assert_eq!(name(&[rdn(&[atv(CN, utf8("café"))])]), r"CN=caf\C3\A9");
        assert_eq!(name(&[rdn(&[atv(CN, utf8("a\nb"))])]), r"CN=a\0Ab");
        // BMPString "é" is converted to UTF-8 first, then escaped.
        assert_eq!(
            name(&[rdn(&[atv(CN, tlv(0x1e, &[0x00, 0xe9]))])]),
            r"CN=\C3\A9"
        );
        // T61String bytes are taken as Latin-1.
        assert_eq!(name(&[rdn(&[atv(CN, tlv(0x14, &[0xe9]))])]), r"CN=\C3\A9");
        // PrintableString and IA5String pass through.
        assert_eq!(name(&[rdn(&[atv(CN, tlv(0x13, b"Ab 1"))])]), "CN=Ab 1");
        assert_eq!(name(&[rdn(&[atv(CN, tlv(0x16, b"x@y"))])]), "CN=x@y");
    }

    #[test]
    fn well_known_attribute_names() {
        let email = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01];
        let dc = [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19];
        let uid = [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01];
        let s = name(&[
            rdn(&[atv(&dc, tlv(0x16, b"org"))]),
            rdn(&[atv(&uid, utf8("u1"))]),
            rdn(&[atv(&email, tlv(0x16, b"a@b.org"))]),
        ]);
        assert_eq!(s, "emailAddress=a@b.org,UID=u1,DC=org");
    }

    #[test]
    fn unknown_types_and_values_are_dumped() {
        // An OID OpenSSL does not name: dotted OID, value as DER hex.
        let s = name(&[rdn(&[atv(&[0x2a, 0x03, 0x04], utf8("abc"))])]);
        assert_eq!(s, "1.2.3.4=#0C03616263");
        // A known type with a non-string value (an INTEGER).
        let s = name(&[rdn(&[atv(CN, tlv(0x02, &[0x01, 0x00]))])]);
        assert_eq!(s, "CN=#02020100");
    }
}
