//! Checks the server frames the browser SDK's tests fed the SDK: each must
//! be a frame the gateway could send. `tests/sdk/fakes.mjs` records every
//! frame a test delivers (except those a test marks as deliberately
//! malformed) when `CAVLO_SDK_FRAMES` names a file; scripts/test.sh then
//! runs
//!
//!     cargo run -p schemas --example check_sdk_frames -- FILE
//!
//! A frame passes if it decodes as a [`ServerFrame`] and encoding that again
//! gives back every field it had, with the same value: a missing field, a
//! wrong type, a misspelt or unknown field all fail. Fails on an empty or
//! missing file too, so a recording that stopped working cannot pass.

use std::process::ExitCode;

use schemas::client::ServerFrame;
use serde_json::Value;

/// Why a recorded frame is not one the gateway could send.
fn check(line: &str) -> Result<(), String> {
    let sent: Value = serde_json::from_str(line).map_err(|err| format!("not JSON: {err}"))?;
    let frame: ServerFrame =
        serde_json::from_value(sent.clone()).map_err(|err| format!("not a server frame: {err}"))?;
    let again: Value = serde_json::from_str(&frame.to_json()).expect("a frame is JSON");
    let (Value::Object(sent), Value::Object(again)) = (&sent, &again) else {
        return Err("not an object".into());
    };
    for (field, value) in sent {
        match again.get(field) {
            Some(same) if same == value => {}
            Some(other) => return Err(format!("`{field}` reads back as {other}")),
            None => return Err(format!("`{field}` is no field of this frame")),
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: check_sdk_frames FILE");
        return ExitCode::FAILURE;
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) => {
            eprintln!("check_sdk_frames: cannot read {path}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let (mut checked, mut wrong) = (0, 0);
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        checked += 1;
        if let Err(why) = check(line) {
            wrong += 1;
            eprintln!("{why}: {line}");
        }
    }
    println!("{checked} server frames from the SDK tests, {wrong} the gateway could not send");
    if checked == 0 || wrong > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn judges_frames_by_every_field() {
        let ok = r#"{"type":"refreshed","expires_in":10}"#;
        assert_eq!(check(ok), Ok(()));
        for (case, line) in [
            ("missing field", r#"{"type":"refreshed"}"#),
            ("wrong type", r#"{"type":"refreshed","expires_in":"10"}"#),
            (
                "unknown field",
                r#"{"type":"refreshed","expires_in":10,"exp":1}"#,
            ),
            ("unknown type", r#"{"type":"hello"}"#),
        ] {
            assert!(check(line).is_err(), "{case}");
        }
    }
}
