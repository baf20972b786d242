//! PostgreSQL's built-in type OIDs (fixed in `pg_type.dat`, the same on every server), with
//! the names a reviewer knows them by.

pub const BOOL: u32 = 16;
pub const BYTEA: u32 = 17;
pub const NAME: u32 = 19;
pub const INT8: u32 = 20;
pub const INT2: u32 = 21;
pub const INT4: u32 = 23;
pub const TEXT: u32 = 25;
pub const OID: u32 = 26;
pub const JSON: u32 = 114;
pub const CIDR: u32 = 650;
pub const FLOAT4: u32 = 700;
pub const FLOAT8: u32 = 701;
pub const UNKNOWN: u32 = 705;
pub const INET: u32 = 869;
pub const BPCHAR: u32 = 1042;
pub const VARCHAR: u32 = 1043;
pub const DATE: u32 = 1082;
pub const TIME: u32 = 1083;
pub const TIMESTAMP: u32 = 1114;
pub const TIMESTAMPTZ: u32 = 1184;
pub const INTERVAL: u32 = 1186;
pub const NUMERIC: u32 = 1700;
pub const UUID: u32 = 2950;
pub const JSONB: u32 = 3802;

/// (type, its array type, name) for every type the decoders read.
const DECODED: &[(u32, u32, &str)] = &[
    (BOOL, 1000, "bool"),
    (BYTEA, 1001, "bytea"),
    (NAME, 1003, "name"),
    (INT8, 1016, "int8"),
    (INT2, 1005, "int2"),
    (INT4, 1007, "int4"),
    (TEXT, 1009, "text"),
    (OID, 1028, "oid"),
    (JSON, 199, "json"),
    (CIDR, 651, "cidr"),
    (FLOAT4, 1021, "float4"),
    (FLOAT8, 1022, "float8"),
    (INET, 1041, "inet"),
    (BPCHAR, 1014, "bpchar"),
    (VARCHAR, 1015, "varchar"),
    (DATE, 1182, "date"),
    (TIME, 1183, "time"),
    (TIMESTAMP, 1115, "timestamp"),
    (TIMESTAMPTZ, 1185, "timestamptz"),
    (INTERVAL, 1187, "interval"),
    (NUMERIC, 1231, "numeric"),
    (UUID, 2951, "uuid"),
    (JSONB, 3807, "jsonb"),
];

/// Types shown as base64, named so the reviewer knows what the bytes are.
const NAMED_ONLY: &[(u32, &str)] = &[
    (18, "char"),
    (22, "int2vector"),
    (24, "regproc"),
    (27, "tid"),
    (28, "xid"),
    (29, "cid"),
    (30, "oidvector"),
    (142, "xml"),
    (600, "point"),
    (601, "lseg"),
    (602, "path"),
    (603, "box"),
    (604, "polygon"),
    (628, "line"),
    (718, "circle"),
    (UNKNOWN, "unknown"),
    (774, "macaddr8"),
    (790, "money"),
    (829, "macaddr"),
    (1266, "timetz"),
    (1560, "bit"),
    (1562, "varbit"),
    (2205, "regclass"),
    (2206, "regtype"),
    (2249, "record"),
    (3220, "pg_lsn"),
    (3614, "tsvector"),
    (3615, "tsquery"),
    (3904, "int4range"),
    (3906, "numrange"),
    (3908, "tsrange"),
    (3910, "tstzrange"),
    (3912, "daterange"),
    (3926, "int8range"),
    (4072, "jsonpath"),
    (4089, "regnamespace"),
    (4096, "regrole"),
];

/// Every type the decoders read, arrays included.
pub fn decoded_types() -> impl Iterator<Item = u32> {
    DECODED.iter().flat_map(|(t, a, _)| [*t, *a])
}

/// The element type of a decoded array type.
pub fn element_of(array: u32) -> Option<u32> {
    DECODED.iter().find(|(_, a, _)| *a == array).map(|(t, _, _)| *t)
}

/// The type's name (`int4`, `text[]`), or `type 16384` for one the table does not know
/// (extensions and user types have OIDs of their own on each server).
pub fn type_name(oid: u32) -> String {
    if let Some((_, _, name)) = DECODED.iter().find(|(t, _, _)| *t == oid) {
        return (*name).to_string();
    }
    if let Some((_, _, name)) = DECODED.iter().find(|(_, a, _)| *a == oid) {
        return format!("{name}[]");
    }
    match NAMED_ONLY.iter().find(|(t, _)| *t == oid) {
        Some((_, name)) => (*name).to_string(),
        None => format!("type {oid}"),
    }
}

/// Types whose values are numbers, shown bare as psql would take them.
pub fn is_numeric(oid: u32) -> bool {
    matches!(oid, INT2 | INT4 | INT8 | FLOAT4 | FLOAT8 | NUMERIC | OID)
}

/// Types whose values are text, so the bytes of a binary value are the text itself.
pub fn is_textual(oid: u32) -> bool {
    matches!(oid, TEXT | VARCHAR | BPCHAR | NAME | UNKNOWN | JSON | JSONB | 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(type_name(INT4), "int4");
        assert_eq!(type_name(1007), "int4[]");
        assert_eq!(type_name(600), "point");
        assert_eq!(type_name(99999), "type 99999");
        assert_eq!(element_of(3807), Some(JSONB));
        assert_eq!(element_of(INT4), None);
    }
}
