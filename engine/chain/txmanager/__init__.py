"""txmanager"""
