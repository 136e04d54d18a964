// tasks.js
