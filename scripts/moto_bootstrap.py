#!/usr/bin/env python3
"""Creates the IAM users, keys and role the tests use in a fresh moto server, then prints
them as KEY=VALUE lines for the services env file. Run before signature checks are on."""
import json
import sys

import boto3

endpoint = sys.argv[1]
iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")

allow_all = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
user = iam.create_user(UserName="proxy")["User"]
iam.put_user_policy(UserName="proxy", PolicyName="all", PolicyDocument=json.dumps(allow_all))
key = iam.create_access_key(UserName="proxy")["AccessKey"]
iam.create_user(UserName="nopolicy")
nokey = iam.create_access_key(UserName="nopolicy")["AccessKey"]
trust = {
    "Version": "2012-10-17",
    "Statement": [{
        "Effect": "Allow",
        "Principal": {"AWS": user["Arn"]},
        "Action": ["sts:AssumeRole", "sts:TagSession"],
        "Condition": {"StringEquals": {"sts:ExternalId": "ext-123"}},
    }],
}
role = iam.create_role(RoleName="audit-target", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
data_policy = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["dynamodb:*", "s3:*"], "Resource": "*"}]}
iam.put_role_policy(RoleName="audit-target", PolicyName="data", PolicyDocument=json.dumps(data_policy))

# DynamoDB roles. audit-reader may only read, so a write through it is refused by AWS (moto).
def trusting(principal, external_id=None):
    statement = {"Effect": "Allow", "Principal": {"AWS": principal}, "Action": ["sts:AssumeRole", "sts:TagSession"]}
    if external_id:
        statement["Condition"] = {"StringEquals": {"sts:ExternalId": external_id}}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


reader = iam.create_role(RoleName="audit-reader", AssumeRolePolicyDocument=trusting(user["Arn"], "ext-123"))["Role"]
iam.put_role_policy(RoleName="audit-reader", PolicyName="read", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan", "dynamodb:DescribeTable"], "Resource": "*"}]}))
# A chain: the proxy assumes dbtape-hop (external ID hop-ext-456), and from there audit-chained,
# which trusts only sessions of dbtape-hop named "dbtape".
hop = iam.create_role(RoleName="dbtape-hop", AssumeRolePolicyDocument=trusting(user["Arn"], "hop-ext-456"))["Role"]
iam.put_role_policy(RoleName="dbtape-hop", PolicyName="hop", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:TagSession"], "Resource": "*"}]}))
account = user["Arn"].split(":")[4]
chained = iam.create_role(RoleName="audit-chained",
                          AssumeRolePolicyDocument=trusting(f"arn:aws:sts::{account}:assumed-role/dbtape-hop/dbtape"))["Role"]
iam.put_role_policy(RoleName="audit-chained", PolicyName="data", PolicyDocument=json.dumps(data_policy))

print(f"MOTO_READER_ROLE_ARN={reader['Arn']}")
print(f"MOTO_HOP_ROLE_ARN={hop['Arn']}")
print("MOTO_HOP_EXTERNAL_ID=hop-ext-456")
print(f"MOTO_CHAINED_ROLE_ARN={chained['Arn']}")
print(f"MOTO_ACCOUNT_ID={account}")
print(f"MOTO_ACCESS_KEY_ID={key['AccessKeyId']}")
print(f"MOTO_SECRET_ACCESS_KEY={key['SecretAccessKey']}")
print(f"MOTO_NOPOLICY_ACCESS_KEY_ID={nokey['AccessKeyId']}")
print(f"MOTO_NOPOLICY_SECRET_ACCESS_KEY={nokey['SecretAccessKey']}")
print(f"MOTO_ROLE_ARN={role['Arn']}")
print("MOTO_EXTERNAL_ID=ext-123")
