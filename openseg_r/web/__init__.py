"""The web app: openseg-r serve web."""
