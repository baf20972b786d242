//! Event type strings and codes. They must match Teleport's catalogue exactly, because SIEM
//! pipelines built for Teleport key their parsers on these literals.

use serde::{Deserialize, Serialize};

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::parse(&text).ok_or_else(|| serde::de::Error::custom(format!(
                    "unknown {} {:?}", stringify!($name), text)))
            }
        }
    };
}

string_enum! {
    /// The `event` field.
    EventType {
        SessionStart => "db.session.start",
        SessionEnd => "db.session.end",
        SessionQuery => "db.session.query",
        SessionQueryFailed => "db.session.query.failed",
        SessionResult => "db.session.result",
        MalformedPacket => "db.session.malformed_packet",
        PostgresParse => "db.session.postgres.statements.parse",
        PostgresBind => "db.session.postgres.statements.bind",
        PostgresExecute => "db.session.postgres.statements.execute",
        PostgresClose => "db.session.postgres.statements.close",
        PostgresFunctionCall => "db.session.postgres.function",
        DynamoDbRequest => "db.session.dynamodb.request",
        RecordingGap => "dbtape.recording.gap",
        RecordingAccess => "session.recording.access",
        ConfigReload => "dbtape.config.reload",
    }
}

string_enum! {
    /// The `code` field.
    EventCode {
        SessionStartOk => "TDB00I",
        SessionStartDenied => "TDB00W",
        SessionEnd => "TDB01I",
        Query => "TDB02I",
        QueryFailed => "TDB02W",
        MalformedPacket => "TDB06I",
        Result => "TDB10I",
        PostgresParse => "TPG00I",
        PostgresBind => "TPG01I",
        PostgresExecute => "TPG02I",
        PostgresClose => "TPG03I",
        PostgresFunctionCall => "TPG04I",
        DynamoDbRequestOk => "TDY01I",
        DynamoDbRequestError => "TDY01E",
        RecordingGap => "DTP01W",
        RecordingAccess => "T2012I",
        ConfigReloaded => "DTP02I",
        ConfigRejected => "DTP02W",
    }
}

string_enum! {
    /// The `db_protocol` field and the `protocol` key in config. `review` and `dbtape` are not
    /// databases: they mark the review console's reviewer-access recordings and the proxy's
    /// own (configuration reloads), and config refuses them.
    Protocol {
        Postgres => "postgres",
        MongoDb => "mongodb",
        DynamoDb => "dynamodb",
        Review => "review",
        Proxy => "dbtape",
    }
}
