// the browser client
