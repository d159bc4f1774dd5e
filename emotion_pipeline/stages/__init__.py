"""One module per stage; the public function of each is what a DAG task calls."""
