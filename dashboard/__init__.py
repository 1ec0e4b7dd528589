"""slidemap.dashboard"""
