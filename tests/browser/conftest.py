# label_widget.ipynb is test_browser.py's fixture, run there in JupyterLab with a temporary store;
# `pytest --nbval-lax tests` should not run it a second time on its own.
collect_ignore = ["label_widget.ipynb"]
