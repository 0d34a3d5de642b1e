VERSION = "1.0"
SERVER_NAME = f"friendlyhello/{VERSION}"
