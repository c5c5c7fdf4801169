"""The app under test: import, lifespan, HTTP and websocket clients, the live server."""
