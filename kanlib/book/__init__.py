"""The publishing tools: they run the notebooks, build the website and the slide decks, and give the notebooks
their setup, tables and figures. ``import kanlib`` imports none of this; these modules need the ``book`` extra
(papermill, nbformat, Jupyter Book, pandas, seaborn).

:mod:`.runner` executes notebooks with papermill, :mod:`.site` builds the Jupyter Book, :mod:`.slides` the
reveal.js decks, :mod:`.web_assets` installs the offline JavaScript from npm, :mod:`.sphinx_ext` is the Sphinx
extension the book's ``_config.yml`` loads, :mod:`.notebook` the setup every notebook's first cell runs,
:mod:`.results` and :mod:`.plotting` the tables and figures, :mod:`.demo` the live demo's models and manifest,
:mod:`.paths` where everything lies.
"""
