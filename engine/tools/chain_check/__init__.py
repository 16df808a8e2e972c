"""chain_check"""
