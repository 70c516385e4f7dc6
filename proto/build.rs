//! Compiles the protobuf definitions with protox (pure Rust), so no system protoc is
//! needed, and generates prost messages and tonic services.
//!
//! Enums get their JSON names here too: prost keeps an enum field as an `i32`, which
//! serde would print as a number, so every enum field is given the serde functions
//! of `custody_proto::enums` and every enum a `WireEnum` impl with its names (the
//! value name without the enum's prefix, lower case), generated from the same
//! descriptors so a new value or field cannot be forgotten.

use std::fmt::Write as _;

use anyhow::{Context, bail};

/// `FieldDescriptorProto` type and label numbers (descriptor.proto).
const TYPE_ENUM: i32 = 14;
const LABEL_REPEATED: i32 = 3;

fn main() -> anyhow::Result<()> {
    let files = [
        "custody/sensor/v1/events.proto",
        "custody/sensor/v1/sensor.proto",
        "custody/admin/v1/admin.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let mut config = tonic_prost_build::configure()
        // Malformed messages are the sender's error (see src/codec.rs).
        .codec_path("crate::codec::StrictCodec")
        // Events double as the daemon's JSON lines.
        .type_attribute(
            ".custody",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        .type_attribute(".custody", "#[serde(rename_all = \"snake_case\")]")
        .message_attribute(".custody", "#[serde(default)]")
        // Host rules per agent in a stable order: the sensor numbers rules as it
        // walks them.
        .btree_map(".custody.sensor.v1.HostRules.agents");

    let mut names = String::new();
    for file in &fds.file {
        let package = file.package();
        let module = rust_module(package)?;
        for e in &file.enum_type {
            let enum_name = e.name();
            let prefix = format!("{}_", screaming_snake(enum_name));
            let mut table = String::new();
            for v in &e.value {
                let Some(short) = v.name().strip_prefix(&prefix) else {
                    bail!(
                        "{package}.{enum_name}: value {} lacks the prefix {prefix}",
                        v.name()
                    );
                };
                write!(
                    table,
                    "({}, {:?}), ",
                    v.number(),
                    short.to_ascii_lowercase()
                )?;
            }
            writeln!(
                names,
                "impl crate::enums::WireEnum for {module}::{enum_name} {{\n    \
                 const NAMES: &'static [(i32, &'static str)] = &[{table}];\n}}"
            )?;
        }
        for m in &file.message_type {
            // Only top-level messages are walked for enum fields (map entries aside).
            let nested = m
                .nested_type
                .iter()
                .any(|n| !n.options.as_ref().is_some_and(|o| o.map_entry()));
            if nested || !m.enum_type.is_empty() {
                bail!(
                    "{package}.{}: enums and messages must be at the top level of the file",
                    m.name()
                );
            }
            for f in &m.field {
                if f.r#type != Some(TYPE_ENUM) {
                    continue;
                }
                if f.proto3_optional() {
                    bail!(
                        "{package}.{}.{}: optional enum fields are not rendered",
                        m.name(),
                        f.name()
                    );
                }
                let ty = f
                    .type_name()
                    .strip_prefix('.')
                    .context("enum type name is not fully qualified")?;
                let (ty_package, ty_name) = ty.rsplit_once('.').context("enum type package")?;
                let ty = format!("{}::{ty_name}", rust_module(ty_package)?);
                let with = if f.label == Some(LABEL_REPEATED) {
                    "repeated"
                } else {
                    "one"
                };
                config = config.field_attribute(
                    format!(".{package}.{}.{}", m.name(), f.name()),
                    format!(
                        "#[serde(serialize_with = \"crate::enums::{with}::serialize::<{ty}, _>\", \
                         deserialize_with = \"crate::enums::{with}::deserialize::<{ty}, _>\")]"
                    ),
                );
            }
        }
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("enum_names.rs"), names)?;
    config.compile_fds(fds)?;
    Ok(())
}

/// `custody.sensor.v1` → `crate::sensor::v1` (the modules of lib.rs).
fn rust_module(package: &str) -> anyhow::Result<String> {
    let rest = package
        .strip_prefix("custody.")
        .with_context(|| format!("package {package} is not under custody."))?;
    Ok(format!("crate::{}", rest.replace('.', "::")))
}

/// `FileAccess` → `FILE_ACCESS`, as protobuf style names enum value prefixes.
fn screaming_snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}
