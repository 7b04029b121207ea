"""Reads a cluster file, plans ranks, writes the rank table, starts and supervises every rank.

Never imports MindSpore: the launch node (a login node, a laptop) may not have it.
"""
