//! The test harness itself: every service `scripts/services` starts answers a real client,
//! and the AWS stand-in really checks signatures.

mod common;

use common::services::Services;

#[test]
fn postgres_answers_psql_over_verified_tls() {
    let s = Services::load();
    let conninfo = format!(
        "host={} port={} user={} dbname=postgres sslmode=verify-full sslrootcert={}",
        s.get("PG_HOST"),
        s.get("PG_PORT"),
        s.get("PG_USER"),
        s.get("PG_CA")
    );
    let out = std::process::Command::new("psql")
        .args([conninfo.as_str(), "-Atc", "select ssl from pg_stat_ssl where pid = pg_backend_pid()"])
        .env("PGPASSWORD", s.get("PG_PASSWORD"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");

    let wrong =
        std::process::Command::new("psql").args([conninfo.as_str(), "-Atc", "select 1"]).env("PGPASSWORD", "wrong").output().unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"));
}

#[test]
fn mongodb_compatible_server_answers_pymongo() {
    let s = Services::load();
    let script = "import sys, pymongo\n\
c = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000)\n\
c.t.books.insert_one({'_id': 1, 'title': 'Dune'})\n\
print(c.t.books.find_one({'_id': 1})['title'], c.admin.command('ping')['ok'])\n";
    let out = s.python().args(["-c", script, s.get("MONGO_URI")]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Dune 1.0");
}

#[test]
fn moto_checks_sigv4_signatures() {
    let s = Services::load();
    let script = "import sys, boto3, botocore\n\
ep, key, secret = sys.argv[1:4]\n\
def sts(sec):\n    return boto3.client('sts', endpoint_url=ep, region_name='us-east-1', aws_access_key_id=key, aws_secret_access_key=sec)\n\
print(sts(secret).get_caller_identity()['Arn'])\n\
try:\n    sts(secret + 'x').get_caller_identity(); print('accepted')\n\
except botocore.exceptions.ClientError as e:\n    print(e.response['ResponseMetadata']['HTTPStatusCode'])\n";
    let out = s
        .python()
        .args(["-c", script, s.get("AWS_ENDPOINT"), s.get("MOTO_ACCESS_KEY_ID"), s.get("MOTO_SECRET_ACCESS_KEY")])
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, ["arn:aws:iam::123456789012:user/proxy", "403"]);
}
