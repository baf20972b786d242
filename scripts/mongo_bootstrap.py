"""Creates the MongoDB users the tests log in as, on a server started without --auth.

Usage: mongo_bootstrap.py PORT PASSWORD
"""
import sys

import pymongo

port, password = sys.argv[1], sys.argv[2]
client = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=10000)
client.admin.command("createUser", "dbtape_app", pwd=password, roles=[{"role": "root", "db": "admin"}])
client.admin.command("createUser", "dbtape_reader", pwd=password, roles=[{"role": "readAnyDatabase", "db": "admin"}])
client.close()
