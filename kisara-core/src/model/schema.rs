//! OpenAPI schemas of the types serialized as validated strings (`try_from =
//! "String"`), which a derive would describe as the struct they are in Rust.

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use super::{ContainerPort, ImageRef, NodeId};
use crate::RecordingId;

/// Implements `ToSchema` for a type whose wire form is one string.
macro_rules! string_schema {
    ($type:ty, $description:expr, pattern: $pattern:expr, max_length: $max:expr, example: $example:expr) => {
        impl utoipa::PartialSchema for $type {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some($description))
                    .min_length(Some(1))
                    .max_length($max)
                    .pattern($pattern)
                    .examples([$example])
                    .into()
            }
        }

        impl utoipa::ToSchema for $type {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($type))
            }
        }
    };
}

string_schema!(
    NodeId,
    "A node (one Docker host) of the cluster, chosen by its agent: 1 to 64 characters of \
     [A-Za-z0-9_.-] starting with a letter or digit.",
    pattern: Some("^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
    max_length: Some(64),
    example: "n1"
);

string_schema!(
    ImageRef,
    "An image reference as Docker writes it: `[registry[:port]/]repository[:tag][@digest]`, \
     lowercase repository; `latest` when neither tag nor digest is given.",
    pattern: None::<String>,
    max_length: None,
    example: "ctf/web-1:latest"
);

string_schema!(
    ContainerPort,
    "A container port with its protocol, `<1-65535>/<tcp|udp>`; a bare number means TCP. \
     Always answered as `80/tcp`.",
    pattern: Some("^\\s*[0-9]+\\s*(/\\s*([tT][cC][pP]|[uU][dD][pP])\\s*)?$"),
    max_length: None,
    example: "80/tcp"
);

string_schema!(
    RecordingId,
    "A recording, by the id its store generated: 32 lowercase hex digits (128 random bits), \
     never a file name.",
    pattern: Some("^[0-9a-f]{32}$"),
    max_length: Some(32),
    example: "5d1f0c9a3b7e4f2a8c6d0e1b9a7f3c5d"
);
