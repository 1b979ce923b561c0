"""Executors: cosmos-xenna, Ray Data and Ray actor pool, sharing one stage adapter."""
