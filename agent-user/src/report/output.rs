//! Local outputs for operators: JSON lines on stdout or to a file.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use custody_proto::sensor::v1::Event;

pub struct JsonLines {
    out: BufWriter<Box<dyn Write + Send>>,
}

impl JsonLines {
    pub fn stdout() -> Self {
        JsonLines {
            out: BufWriter::with_capacity(1 << 16, Box::new(std::io::stdout())),
        }
    }

    pub fn file(path: &Path) -> Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening output file {}", path.display()))?;
        Ok(JsonLines {
            out: BufWriter::with_capacity(1 << 16, Box::new(f)),
        })
    }

    pub fn write(&mut self, ev: &Event) -> Result<()> {
        serde_json::to_writer(&mut self.out, ev)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out.flush()?;
        Ok(())
    }
}
