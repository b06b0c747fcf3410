"""Storage: the only package that talks to MongoDB (pymongo, GridFS, the embedded mongod)."""
