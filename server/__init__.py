"""slidemap.server"""
