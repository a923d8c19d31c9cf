"""Datasets: uploaded training data (npz arrays, zip image folders, csv tables)."""
