//! Bounded fuzzing of the JSON decoders (the CI run; `PROPTEST_CASES=100000`
//! for a longer one): no input panics a decoder, every failure names the
//! message, and a valid body with fields mangled or added still decodes or
//! fails cleanly.

use kisara_webhook::wire::{
    AuthResponse, AuthzRequest, ConfigRequest, ConfigResponse, PasswordRequest, PublicKeyRequest,
    SessionEndedRequest, TokenRequest, decode,
};
use proptest::prelude::*;
use serde::de::DeserializeOwned;

const FIXTURES: &[&str] = &[
    include_str!("fixtures/password-request.json"),
    include_str!("fixtures/pubkey-request.json"),
    include_str!("fixtures/authz-request.json"),
    include_str!("fixtures/auth-response.json"),
    include_str!("fixtures/auth-response-extra.json"),
    include_str!("fixtures/config-request.json"),
    include_str!("fixtures/config-response.json"),
    include_str!("fixtures/kisara-config-response.json"),
];

/// Decodes `body` as `T`: either a value, or an error naming the message.
fn decodes_cleanly<T: DeserializeOwned>(body: &[u8]) {
    if let Err(err) = decode::<T>("fuzzed body", body) {
        assert!(err.to_string().contains("fuzzed body"), "{err}");
    }
}

fn every_decoder(body: &[u8]) {
    decodes_cleanly::<PasswordRequest>(body);
    decodes_cleanly::<PublicKeyRequest>(body);
    decodes_cleanly::<AuthzRequest>(body);
    decodes_cleanly::<TokenRequest>(body);
    decodes_cleanly::<AuthResponse>(body);
    decodes_cleanly::<ConfigRequest>(body);
    decodes_cleanly::<ConfigResponse>(body);
    decodes_cleanly::<SessionEndedRequest>(body);
}

/// JSON values of a few levels, strings with odd characters.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(
            |f| serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)
        ),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,10}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        every_decoder(&body);
    }

    #[test]
    fn arbitrary_json_never_panics(value in json_value()) {
        every_decoder(&serde_json::to_vec(&value).unwrap());
    }

    #[test]
    fn fixtures_with_a_field_replaced_or_cut_decode_or_fail_cleanly(
        fixture in prop::sample::select(FIXTURES),
        field in any::<prop::sample::Index>(),
        value in json_value(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut body: serde_json::Value = serde_json::from_str(fixture).unwrap();
        let object = body.as_object_mut().unwrap();
        let keys: Vec<String> = object.keys().cloned().collect();
        object.insert(keys[field.index(keys.len())].clone(), value);
        let bytes = serde_json::to_vec(&body).unwrap();
        every_decoder(&bytes);
        every_decoder(&bytes[..cut.index(bytes.len() + 1)]);
    }
}
