"""Provider kinds: each implements the `satapi.wms_client.ImageClient` protocol."""
