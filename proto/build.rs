//! Compiles the protobuf definitions with protox (pure Rust), so no system protoc is
//! needed, and generates prost messages and tonic services.

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
    tonic_prost_build::configure()
        // Events double as the daemon's JSON lines.
        .type_attribute(
            ".custody",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        .type_attribute(".custody", "#[serde(rename_all = \"snake_case\")]")
        .message_attribute(".custody", "#[serde(default)]")
        .compile_fds(fds)?;
    Ok(())
}
