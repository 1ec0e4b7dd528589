"""slidemap.compute"""
