// task_detail.js
